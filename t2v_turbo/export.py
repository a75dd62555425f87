"""Export a student for use outside this toolkit.

Three formats (``t2v-turbo export STUDENT_DIR --format ... --out DIR``):

- ``lora``: ``student_lora.safetensors`` with the LoRA weights under peft's names
  (``<module>.lora_A.weight`` / ``.lora_B.weight``) and the guidance layer
  (``time_embedding.cond_proj.weight``), plus ``export.json`` (rank, alpha, targets).
- ``merged``: a diffusers ``UNet3DConditionModel`` folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) with the LoRA merged into the base weights,
  W' = W + (alpha / rank) B A, keeping ``time_cond_proj_dim`` and the guidance layer.
- ``diffusers``: a complete ``TextToVideoSDPipeline`` folder that stock diffusers runs with
  ``guidance_scale=1``. Stock pipelines pass no ``timestep_cond``, so the chosen guidance scale w
  is folded into the UNet: diffusers computes
  ``linear_1(t_emb + cond_proj(emb(w)))`` = ``W1 t_emb + (b1 + W1 cond_proj(emb(w)))``, a
  constant shift of ``linear_1``'s bias; the folded UNet has no ``cond_proj``. The scheduler is an
  ``LCMScheduler`` on the teacher's betas with ``original_inference_steps`` = the distillation
  grid size (50) and ``timestep_scaling`` 10, which is this toolkit's sampler with
  ``spacing="lcm"``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.fileio import atomic_write
from t2v_turbo.student import (
    ADAPTER_NAME,
    StudentMeta,
    has_lora,
    load_student,
    load_teacher_for,
    read_student_meta,
    student_state_dict,
)

EXPORT_FORMATS = ("lora", "merged", "diffusers")
LORA_WEIGHTS_NAME = "student_lora.safetensors"


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def merged_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The plain UNet state dict with every LoRA delta (alpha / rank) B A added to its base weight."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, tensor in unet.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().clone()
    for module_name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            key = f"{module_name}.weight"
            state[key] = state[key] + module.get_delta_weight(ADAPTER_NAME).to(state[key].dtype)
    return state


def merge_student(unet: nn.Module) -> nn.Module:
    """A plain ``UNet3DConditionModel`` equal to the LoRA student (loaded strictly)."""
    from diffusers import UNet3DConditionModel

    merged = UNet3DConditionModel.from_config(unet.config)
    merged.load_state_dict(merged_state_dict(unet) if has_lora(unet) else unet.state_dict(), strict=True)
    param = next(unet.parameters())
    return merged.to(device=param.device, dtype=param.dtype).eval()


def fold_guidance_scale(unet: nn.Module, guidance_scale: float) -> nn.Module:
    """A UNet without ``time_embedding.cond_proj`` whose output equals ``unet`` run with the
    guidance embedding of ``guidance_scale``: b1 <- b1 + W1 cond_proj(emb(w))."""
    from diffusers import UNet3DConditionModel

    if has_lora(unet):
        unet = merge_student(unet)
    time_embedding = unet.time_embedding
    if time_embedding.cond_proj is None:
        raise ValueError("the UNet has no guidance layer (time_cond_proj_dim is None): nothing to fold")
    with torch.no_grad():
        w = torch.tensor([float(guidance_scale)], device=time_embedding.linear_1.weight.device)
        embedding = guidance_scale_embedding(w, unet.config.time_cond_proj_dim).to(time_embedding.cond_proj.weight.dtype)
        shift = time_embedding.cond_proj(embedding)[0]  # added to t_emb before linear_1
        state = {k: v.detach().clone() for k, v in unet.state_dict().items() if k != "time_embedding.cond_proj.weight"}
        state["time_embedding.linear_1.bias"] = (
            state["time_embedding.linear_1.bias"].double() + time_embedding.linear_1.weight.double() @ shift.double()
        ).to(state["time_embedding.linear_1.bias"].dtype)
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config["time_cond_proj_dim"] = None
    folded = UNet3DConditionModel.from_config(config)
    folded.load_state_dict(state, strict=True)
    param = next(unet.parameters())
    return folded.to(device=param.device, dtype=param.dtype).eval()


def lcm_scheduler_for(adapter, meta: StudentMeta):
    """diffusers' ``LCMScheduler`` on the teacher's schedule and the student's distillation grid."""
    from diffusers import LCMScheduler

    config = adapter.scheduler_config
    return LCMScheduler(
        num_train_timesteps=adapter.num_train_timesteps,
        beta_start=config["beta_start"],
        beta_end=config["beta_end"],
        beta_schedule=config["beta_schedule"],
        trained_betas=config.get("trained_betas"),
        original_inference_steps=meta.num_ddim_timesteps,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=config.get("steps_offset", 0),
        prediction_type="epsilon",
        timestep_scaling=meta.timestep_scaling,
    )


def export_lora(unet: nn.Module, meta: StudentMeta, out: str | Path) -> Path:
    from safetensors.torch import save_file

    if not has_lora(unet) or meta.lora is None:
        raise ValueError("`--format lora` needs a LoRA student; this student is fully fine-tuned (use merged or diffusers)")
    out = Path(out)
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in student_state_dict(unet).items()}
    atomic_write(out / LORA_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_json(out / "export.json", {"format": "lora", "student": dataclasses.asdict(meta)})
    return out


def export_merged(unet: nn.Module, meta: StudentMeta, out: str | Path) -> Path:
    out = Path(out)
    merge_student(unet).save_pretrained(out, safe_serialization=True)
    _write_json(out / "export.json", {"format": "merged", "student": dataclasses.asdict(meta)})
    return out


def export_diffusers_pipeline(unet: nn.Module, meta: StudentMeta, adapter, out: str | Path, guidance_scale: float | None = None) -> Path:
    from diffusers import TextToVideoSDPipeline

    if adapter.family != "diffusers":
        raise ValueError(f"`--format diffusers` needs a diffusers-layout teacher; this student's teacher is {adapter.family!r}")
    guidance_scale = meta.guidance_scale if guidance_scale is None else guidance_scale
    pipeline = TextToVideoSDPipeline(
        vae=adapter.vae,
        text_encoder=adapter.text_encoder,
        tokenizer=adapter.tokenizer,
        unet=fold_guidance_scale(unet, guidance_scale),
        scheduler=lcm_scheduler_for(adapter, meta),
    )
    out = Path(out)
    pipeline.save_pretrained(out, safe_serialization=True)
    _write_json(
        out / "export.json",
        {
            "format": "diffusers",
            "folded_guidance_scale": guidance_scale,
            "run_with": {"guidance_scale": 1.0, "num_inference_steps": meta.num_inference_steps},
            "student": dataclasses.asdict(meta),
        },
    )
    return out


def export_student(student_folder: str | Path, out: str | Path, format: str, guidance_scale: float | None = None) -> Path:
    """Load the student in ``student_folder`` (with its teacher) and export it as ``format``."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"`format`={format!r} is not one of {EXPORT_FORMATS}")
    meta = read_student_meta(student_folder)
    adapter = load_teacher_for(meta, student_folder)
    unet, meta = load_student(student_folder, adapter)
    if format == "lora":
        return export_lora(unet, meta, out)
    if format == "merged":
        return export_merged(unet, meta, out)
    return export_diffusers_pipeline(unet, meta, adapter, out, guidance_scale)
