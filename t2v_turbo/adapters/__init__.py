"""Teacher adapters: one file per teacher family, all behind ``TeacherAdapter``."""

from t2v_turbo.adapters.base import TeacherAdapter

__all__ = ["TeacherAdapter", "teacher_adapter_class"]


def teacher_adapter_class(path: str):
    """The adapter class of a diffusers-layout teacher folder or hub id: ``WanAdapter`` when its
    ``model_index.json`` names a ``transformer`` (Wan / flow teachers), else ``DiffusersT2VAdapter``."""
    from pathlib import Path

    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.adapters.wan import WanAdapter

    if Path(path).expanduser().is_dir():
        return WanAdapter if (Path(path).expanduser() / "transformer").is_dir() else DiffusersT2VAdapter
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(path, local_files_only=True)
    except OSError:
        return DiffusersT2VAdapter  # its from_pretrained names what is missing
    return WanAdapter if "transformer" in index else DiffusersT2VAdapter
