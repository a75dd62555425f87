"""The model a recipe trains: the ``model:`` section of a run config, a ``_component_`` built on the teacher.

- ``from_teacher``: the teacher's network, fine-tuned. With ``time_cond_proj_dim`` (256) it becomes a
  consistency student (the guidance layer added, zero-initialised: T2V-Turbo); with
  ``time_cond_proj_dim: null`` it stays a full-step model sampled with DDIM + CFG (what VADER and
  InstructVideo fine-tune). ``lora`` (or null for full fine-tuning) as ``t2v_turbo.student.LoraSettings``.
- ``from_student``: a distilled student folder (``student.json`` + ``student.safetensors``), its LoRA and
  guidance layer trained further (VADER / InstructVideo on a T2V-Turbo student); the folder's LoRA
  settings and sampling grid carry over to the saved result.

Both return a ``TrainedModel``: the plain module and the ``StudentMeta`` its saved folders record. The
trainer passes ``adapter`` (the frozen teacher) and ``seed`` when it builds the node.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from t2v_turbo.student import LoraSettings, StudentMeta, build_student, guidance_layer_name, load_student


@dataclasses.dataclass
class TrainedModel:
    """The trained network (plain module, trainable parameters marked) and its record."""

    unet: nn.Module
    meta: StudentMeta

    @property
    def kind(self) -> str:
        """"student" (guidance layer, consistency sampler) or "teacher" (a full-step model)."""
        return "student" if self.meta.is_student else "teacher"


def from_teacher(
    adapter,
    time_cond_proj_dim: int | None = 256,
    train_guidance_layer: bool = True,
    lora: dict | None = None,
    seed: int = 0,
) -> TrainedModel:
    """The teacher's network with LoRA (``lora``) or fully trainable (``lora: null``), as a student
    (``time_cond_proj_dim``) or as a full-step model (``time_cond_proj_dim: null``; with LoRA it shares the
    teacher's frozen weights instead of copying them)."""
    settings = LoraSettings(**lora) if lora is not None else None
    unet = build_student(adapter, time_cond_proj_dim, lora=settings, train_guidance_layer=train_guidance_layer,
                         seed=seed, share_teacher_weights=True)
    meta = StudentMeta.for_adapter(adapter, time_cond_proj_dim=time_cond_proj_dim, lora=settings,
                                   train_guidance_layer=train_guidance_layer and time_cond_proj_dim is not None)
    return TrainedModel(unet, meta)


def from_student(adapter, path: str, train_guidance_layer: bool = True, seed: int = 0) -> TrainedModel:
    """The student saved in ``path`` (on ``adapter``'s teacher, strictly loaded), its LoRA (or all its
    weights, when it was fully fine-tuned) trainable again, its guidance layer iff ``train_guidance_layer``."""
    folder = Path(path)
    unet, meta = load_student(folder, adapter)
    if meta.lora is not None:
        for name, param in unet.named_parameters():
            param.requires_grad_(".lora_" in name)
    else:
        unet.requires_grad_(True)
    if meta.is_student:
        dict(unet.named_modules())[guidance_layer_name(unet)].requires_grad_(train_guidance_layer)
    meta = dataclasses.replace(meta, train_guidance_layer=train_guidance_layer and meta.is_student,
                               teacher_path=str(getattr(adapter, "source", None)))
    return TrainedModel(unet.train(), meta)
