"""Paths of the shipped mini-world assets and builders that configs name as ``_component_``.

Paths are resolved relative to the installed package, so configs work from any directory (``pkg:v2/teacher``
in a config is ``miniworld/assets/v2/teacher``). Two worlds are shipped:

- ``assets/v2/`` (``V2``): the world ``configs/miniworld.yaml`` and the quick start use: a flow-matching DiT
  teacher in diffusers' Wan layout that follows every attribute, motion included, on a VAE with 4 x 16x16 latents
  (trained coarse to fine: ``train_assets.build``), with the
  video reward's text tower as its text encoder; the tubelet ViCLIP video reward; the image reward; the
  quick-start student, one seed of the ablation (bench/RESULTS.md).
- ``assets/`` itself (``TEACHER``, ``STUDENT``, ``IMAGE_REWARD``, ``VIDEO_REWARD``): the first world, an
  epsilon-prediction UNet3D teacher (the code path of ModelScope / VideoCrafter2) that ignores motion; the
  recipe configs (VADER, InstructVideo, DPO, RWR, the reward model) and their measured tables use it.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER = ASSETS / "teacher"
IMAGE_REWARD = ASSETS / "image_reward"
VIDEO_REWARD = ASSETS / "video_reward"
STUDENT = ASSETS / "student"
V2 = ASSETS / "v2"
EVAL_PROMPTS = Path(__file__).resolve().parent / "data" / "eval_prompts.txt"


def asset_path(path: str | Path | None, default: Path) -> Path:
    """``path`` if given (``pkg:`` prefix = relative to the shipped assets folder), else ``default``."""
    if path is None:
        return default
    text = str(path)
    if text.startswith("pkg:"):
        return ASSETS / text[4:]
    return Path(text)


def teacher_scores_path(teacher: str | Path | None = None) -> Path:
    """The cached MiniBench scores of a shipped teacher (``teacher_minibench.json`` beside its folder), which the
    quick start shows instead of sampling the teacher again."""
    return asset_path(teacher, TEACHER).parent / "teacher_minibench.json"


def load_teacher(path: str | Path | None = None, **kwargs):
    """The mini-world teacher; default: the shipped folder. A folder with ``transformer/`` is a flow teacher
    (``WanAdapter``: ``miniworld build``'s Wan-layout DiT), one with ``unet/`` an epsilon teacher
    (``DiffusersT2VAdapter``: the UNet3D)."""
    from miniworld.world import FPS, HEIGHT, NUM_FRAMES, WIDTH
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.adapters.wan import WanAdapter

    folder = asset_path(path, TEACHER)
    if (folder / "transformer").is_dir():
        kwargs = {"num_frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "fps": FPS, **kwargs}
        adapter = WanAdapter.from_pretrained(folder, **kwargs)
    else:
        adapter = DiffusersT2VAdapter.from_pretrained(folder, **kwargs)
    adapter.default_num_frames = NUM_FRAMES  # the world's videos have 8 frames (32x32 comes from the UNet/VAE)
    adapter.lossless_video = True  # its small saturated shapes lose colour to yuv420p (students record it)
    return adapter


def student_model(adapter, path: str | Path | None = None, train_guidance_layer: bool = False, seed: int = 0):
    """The shipped student (or the one in ``path``) as the ``model:`` of a run that trains it further
    (``distill.model.from_student``: its LoRA trainable again)."""
    from distill.model import from_student

    return from_student(adapter, str(asset_path(path, STUDENT)), train_guidance_layer=train_guidance_layer, seed=seed)


def training_dataset(folder: str | Path = "runs/miniworld-data", num_videos: int = 2000, seed: int = 0, **kwargs):
    """The world's training split written once as mp4 + CSV under ``folder`` (reused when present),
    read back by the trainer's normal ``distill.data.VideoCaptionCSV``."""
    from distill.data import VideoCaptionCSV
    from miniworld.world import write_dataset

    folder = Path(folder)
    csv_path = folder / f"train_seed{seed}_n{num_videos}.csv"
    if not csv_path.is_file():
        write_dataset(folder, num_videos, seed=seed, split="train", csv_name=csv_path.name + ".tmp")
        (folder / (csv_path.name + ".tmp")).rename(csv_path)
    defaults = dict(num_frames=8, fps=8, height=32, width=32, seed=seed)
    return VideoCaptionCSV(csv=csv_path, **{**defaults, **kwargs})


def training_prompts(split: str = "train", num_prompts: int | None = None, seed: int = 0):
    """Captions of the world's ``split`` as a ``distill.data.PromptDataset``, for recipes that sample their
    own videos (VADER, online DPO): every caption of the split once (``num_prompts`` None; the training
    split has 225 compositions, held-out pairs excluded), or the first ``num_prompts`` captions of the
    split's sample stream (``miniworld.world.sample_at``: compositions in their sampling frequency)."""
    from distill.data import PromptDataset
    from miniworld.world import caption_of, sample_at, train_attributes

    if num_prompts is None:
        if split != "train":
            raise ValueError(f"miniworld prompts: every caption of split {split!r} needs `num_prompts` (only 'train' "
                             "lists its compositions)")
        return PromptDataset(prompts=[caption_of(attrs) for attrs in train_attributes()])
    return PromptDataset(prompts=[sample_at(i, seed, split).caption for i in range(num_prompts)])


def shipped_student_model(adapter, train_guidance_layer: bool = True, seed: int = 0):
    """The shipped quick-start student as the ``model:`` of a run (``distill.model.from_student``):
    VADER / InstructVideo starting from the distilled student instead of the teacher."""
    from distill.model import from_student

    return from_student(adapter, STUDENT, train_guidance_layer=train_guidance_layer, seed=seed)


def evaluation_prompts() -> list[str]:
    """The shipped evaluation prompt set (90 captions: 45 held-out, 45 seen)."""
    return [line for line in EVAL_PROMPTS.read_text().splitlines() if line.strip()]


def load_shipped_student(folder: str | Path | None = None, teacher: str | Path | None = None):
    """A pipeline of a shipped quick-start student (default: the first world's) on its teacher (default: the first
    world's, loaded by ``load_teacher`` with the world's 8-frame default geometry), LoRA kept unmerged."""
    from t2v_turbo.pipeline import model_pipeline
    from t2v_turbo.student import load_student

    adapter = load_teacher(teacher)
    unet, meta = load_student(asset_path(folder, STUDENT), adapter)
    return model_pipeline(adapter, unet, meta)


def ship_student(trained: str | Path, folder: Path = STUDENT) -> Path:
    """Copy a trained student into the shipped assets, recording its teacher as ``../teacher`` so
    the copy loads from any checkout (``t2v_turbo.student.resolve_teacher_path``)."""
    import json
    import shutil

    from t2v_turbo.student import META_NAME, WEIGHTS_NAME

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(trained) / WEIGHTS_NAME, folder / WEIGHTS_NAME)
    meta = json.loads((Path(trained) / META_NAME).read_text())
    meta["teacher_path"] = "../teacher"
    (folder / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder
