"""T2V-Turbo's released students -> our student checkpoints (and back to the list format).

- ``unet_lora.pt`` (T2V-Turbo-VC2 / -MS v1): LoRA list on top of the teacher ->
  a LoRA student (peft, rank = the list's rank, alpha = rank, every Linear/Conv2d/Conv3d).
- merged UNets (T2V-Turbo-VC2-Merged) and v2 full UNets (``unet_no_mg.pt``, ``unet_mg.pt``
  with the motion-conditioning layers) -> a full-UNet student. The variant is detected from the keys.

``time_cond_proj.weight`` is in neither ``model.ckpt`` nor ``unet_lora.pt`` (nor, possibly, a
merged UNet): it is then zero-initialised (plus the list's LoRA delta for that layer) with a
warning; our student files always store it. Conversions are exact: the student reproduces the
released weights bit for bit (``tests/test_convert.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from t2v_turbo.models.vc2 import checkpoint as ckpt
from t2v_turbo.models.vc2 import lora_format as lf
from t2v_turbo.student import LoraSettings, StudentMeta, build_student, load_student, save_student


def student_from_lora_list(adapter, lora_path: str | Path, dropout: float = 0.1, time_cond_proj_dim: int = 256):
    """(student UNet, StudentMeta) from a released (or our exported) ``unet_lora.pt``."""
    tensors = lf.read_lora_list(lora_path)
    rank = lf.infer_rank(tensors)
    lora = LoraSettings(rank=rank, alpha=float(rank), dropout=dropout, target_modules="all_linear_conv")
    unet = build_student(adapter, time_cond_proj_dim, lora=lora, train_guidance_layer=False)
    lf.load_lora_list(tensors, unet)
    sidecar = lf.read_sidecar(lora_path) if isinstance(lora_path, (str, Path)) else None
    if sidecar is not None:
        key = f"{lf.guidance_layer(unet)}.weight"
        if set(sidecar) != {key}:
            raise ValueError(f"{lf.sidecar_path(lora_path)} holds {sorted(sidecar)}, expected {key!r}")
        with torch.no_grad():
            unet.get_parameter(key).copy_(sidecar[key])
    else:
        ckpt.guidance_layer_warning(str(lora_path), "the teacher checkpoint or the LoRA list (its LoRA delta is applied on top)")
    meta = StudentMeta.for_adapter(adapter, lora=lora, time_cond_proj_dim=time_cond_proj_dim, train_guidance_layer=False,
                                   extra={"converted_from": str(lora_path), "source_format": "unet_lora.pt"})
    return unet.eval(), meta


def student_from_unet_file(adapter, unet_path: str | Path, allow_pickle: bool = False):
    """(student UNet, StudentMeta, variant) from a merged / v2 full UNet state dict."""
    state = ckpt.read_unet_file(unet_path, allow_pickle=allow_pickle)
    variant = ckpt.detect_unet_variant(state)
    dim = int(state["time_cond_proj.weight"].shape[1]) if "time_cond_proj.weight" in state else 256
    if variant == "v2_motion":
        from t2v_turbo.adapters.vc2 import VC2MotionAdapter

        motion_dim = int(state["motion_cond_proj.weight"].shape[1])
        if motion_dim != 256:
            raise ValueError(f"{unet_path}: motion_cond_proj takes {motion_dim} features; T2V-Turbo v2 uses 256")
        if not isinstance(adapter, VC2MotionAdapter):
            adapter = VC2MotionAdapter(adapter.unet, adapter.vae, adapter.text_encoder, adapter.config, adapter.schedule,
                                       adapter.source, motion_cond_proj_dim=motion_dim)
    unet = build_student(adapter, dim, lora=None, train_guidance_layer=False)
    expected = unet.state_dict()
    allowed_missing = {"time_cond_proj.weight"} if variant == "no_guidance_layer" else set()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing - allowed_missing or unexpected:
        raise RuntimeError(f"{unet_path}: not a VC2 UNet of this teacher's architecture; "
                           f"missing={sorted(missing - allowed_missing)[:8]} unexpected={sorted(unexpected)[:8]}")
    with torch.no_grad():
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise RuntimeError(f"{unet_path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
            unet.get_parameter(key).copy_(value)
    if variant == "no_guidance_layer":
        ckpt.guidance_layer_warning(str(unet_path), "this UNet file")
    meta = StudentMeta.for_adapter(adapter, lora=None, time_cond_proj_dim=dim, train_guidance_layer=False,
                                   extra={"converted_from": str(unet_path), "source_format": variant})
    unet.requires_grad_(False)
    return unet.eval(), meta, variant


def convert_lora_list(adapter, lora_path, out: str | Path, dropout: float = 0.1) -> Path:
    unet, meta = student_from_lora_list(adapter, lora_path, dropout=dropout)
    return save_student(out, unet, meta)


def convert_unet_file(adapter, unet_path, out: str | Path, allow_pickle: bool = False) -> tuple[Path, str]:
    unet, meta, variant = student_from_unet_file(adapter, unet_path, allow_pickle=allow_pickle)
    return save_student(out, unet, meta), variant


def export_student_to_lora_list(student_folder: str | Path, adapter, out: str | Path) -> tuple[Path, Path]:
    """A LoRA student folder -> ``unet_lora.pt`` (released list format) + the guidance-layer sidecar."""
    unet, meta = load_student(student_folder, adapter)
    if meta.lora is None:
        raise ValueError(f"{student_folder} is a full-UNet student; the list format holds only LoRA students")
    tensors, guidance = lf.export_lora_list(unet, rank=int(meta.lora["rank"]))
    return lf.save_exported_lora(out, tensors, guidance)
