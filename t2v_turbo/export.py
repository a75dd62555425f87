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

Wan (flow) students: stock diffusers' ``WanTransformer3DModel`` has no guidance input, so
``merged`` and ``diffusers`` both fold the guidance scale into ``condition_embedder.time_embedder.
linear_1.bias`` (same algebra as above) and write a stock ``WanTransformer3DModel``; ``diffusers``
is a ``WanPipeline`` folder with diffusers' ``FlowMatchLCMScheduler`` (the flow sampler with
``spacing="lcm"``). ``lora`` also writes diffusers' ``pytorch_lora_weights.safetensors`` (for
``WanPipeline.load_lora_weights``) with the folded guidance as a LoRA bias on ``linear_1``
(peft's ``lora_bias``), and the ``scheduler/`` to sample with.
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


def folded_linear_bias(
    bias: torch.Tensor, weight: torch.Tensor, cond_proj_weight: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """b1 + W1 cond_proj(emb(w)): the bias of the layer after the guidance embedding's sum
    (``linear_1(t_emb + cond_proj(emb(w)))``) that makes it a constant shift (computed in float64)."""
    w = torch.tensor([float(guidance_scale)])
    embedding = guidance_scale_embedding(w, cond_proj_weight.shape[1]).double()
    shift = embedding[0] @ cond_proj_weight.double().cpu().T
    return (bias.double().cpu() + weight.double().cpu() @ shift).to(dtype=bias.dtype, device=bias.device)


def fold_guidance_scale(unet: nn.Module, guidance_scale: float) -> nn.Module:
    """A model without the guidance layer whose output equals ``unet`` run with the guidance
    embedding of ``guidance_scale``: b1 <- b1 + W1 cond_proj(emb(w)) (``folded_linear_bias``).

    ``UNet3DConditionModel`` (``time_embedding.cond_proj``) and Wan students
    (``condition_embedder.time_embedder.cond_proj``, see ``t2v_turbo.adapters.wan``); LoRA is merged first.
    """
    from diffusers import UNet3DConditionModel, WanTransformer3DModel

    if isinstance(unet, WanTransformer3DModel):
        model_cls, prefix = WanTransformer3DModel, "condition_embedder.time_embedder."
    else:
        model_cls, prefix = UNet3DConditionModel, "time_embedding."
    state = merged_state_dict(unet) if has_lora(unet) else {k: v.detach().clone() for k, v in unet.state_dict().items()}
    if prefix + "cond_proj.weight" not in state:
        raise ValueError("the model has no guidance layer (time_cond_proj_dim is None): nothing to fold")
    cond_proj = state.pop(prefix + "cond_proj.weight")
    state[prefix + "linear_1.bias"] = folded_linear_bias(
        state[prefix + "linear_1.bias"], state[prefix + "linear_1.weight"], cond_proj, guidance_scale
    )
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    if model_cls is WanTransformer3DModel:
        config.pop("time_cond_proj_dim")
    else:
        config["time_cond_proj_dim"] = None
    folded = model_cls.from_config(config)
    folded.load_state_dict(state, strict=True, assign=True)  # the loaded tensors' dtypes and devices
    return folded.eval()


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


def wan_diffusers_lora_state_dict(unet: nn.Module, guidance_scale: float) -> tuple[dict[str, torch.Tensor], dict]:
    """A Wan LoRA student in diffusers' format: (state dict, LoRA config) for
    ``WanPipeline.save_lora_weights``, which prefixes the keys with ``transformer.``.

    Every LoRA layer keeps its A and B (peft names without the adapter name) and gets a zero
    ``lora_B.bias``; the guidance scale is folded into one more LoRA layer on
    ``condition_embedder.time_embedder.linear_1`` with A = B = 0 and
    ``lora_B.bias`` = (rank / alpha) W1 cond_proj(emb(w)), so that with peft's scaling alpha / rank it
    adds exactly the shift ``fold_guidance_scale`` puts into the bias (peft's ``lora_bias``).
    """
    from peft.tuners.lora import LoraLayer

    prefix = "condition_embedder.time_embedder."
    lora_modules = {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}
    if prefix + "linear_1" in lora_modules:
        raise ValueError("the guidance fold needs condition_embedder.time_embedder.linear_1 outside the LoRA targets")
    first = next(iter(lora_modules.values()))
    rank, alpha = first.r[ADAPTER_NAME], first.lora_alpha[ADAPTER_NAME]
    state = {}
    for name, module in lora_modules.items():
        a, b = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
        state[f"{name}.lora_A.weight"] = a.detach().cpu().clone()
        state[f"{name}.lora_B.weight"] = b.detach().cpu().clone()
        state[f"{name}.lora_B.bias"] = torch.zeros(b.shape[0], dtype=b.dtype)
    linear_1 = dict(unet.named_modules())[prefix + "linear_1"]
    cond_proj = dict(unet.named_modules())[prefix + "cond_proj"].weight
    zero_bias = torch.zeros_like(linear_1.bias).cpu()
    shift = folded_linear_bias(zero_bias, linear_1.weight.detach(), cond_proj.detach(), guidance_scale)
    state[prefix + "linear_1.lora_A.weight"] = torch.zeros(rank, linear_1.in_features, dtype=shift.dtype)
    state[prefix + "linear_1.lora_B.weight"] = torch.zeros(linear_1.out_features, rank, dtype=shift.dtype)
    state[prefix + "linear_1.lora_B.bias"] = (shift.double() * rank / alpha).to(shift.dtype)
    targets = sorted(lora_modules) + [prefix + "linear_1"]
    config = {"r": rank, "lora_alpha": alpha, "target_modules": targets, "lora_bias": True, "lora_dropout": 0.0}
    return state, config


def export_wan(unet: nn.Module, meta: StudentMeta, adapter, out: str | Path, format: str,
               guidance_scale: float | None = None) -> Path:
    """A Wan student as ``lora`` (our file + diffusers' ``pytorch_lora_weights.safetensors`` and the
    ``scheduler/`` to sample with), ``merged`` (a stock ``WanTransformer3DModel``, LoRA merged,
    guidance folded) or ``diffusers`` (a stock ``WanPipeline`` with ``FlowMatchLCMScheduler``)."""
    from diffusers import FlowMatchLCMScheduler, WanPipeline

    out = Path(out)
    guidance_scale = meta.guidance_scale if guidance_scale is None else guidance_scale
    scheduler = FlowMatchLCMScheduler(num_train_timesteps=adapter.num_train_timesteps, shift=adapter.flow_shift)
    run_with = {"guidance_scale": 1.0, "num_inference_steps": meta.num_inference_steps, "spacing": "lcm"}
    record = {"format": format, "folded_guidance_scale": guidance_scale, "run_with": run_with,
              "student": dataclasses.asdict(meta)}
    if format == "lora":
        export_lora(unet, meta, out)
        state, config = wan_diffusers_lora_state_dict(unet, guidance_scale)
        WanPipeline.save_lora_weights(out, transformer_lora_layers=state, transformer_lora_adapter_metadata=config)
        scheduler.save_pretrained(out / "scheduler")
        record["diffusers_lora"] = {"file": "pytorch_lora_weights.safetensors", "base": meta.teacher_path,
                                    "scheduler": "scheduler/ (FlowMatchLCMScheduler)"}
        _write_json(out / "export.json", record)
        return out
    folded = fold_guidance_scale(unet, guidance_scale)
    if format == "merged":
        folded.save_pretrained(out, safe_serialization=True)
    else:
        if not (adapter.causal_vae and adapter.t5_text):
            raise ValueError(
                f"`--format diffusers` writes a stock WanPipeline, which needs AutoencoderKLWan and a T5 text encoder; "
                f"this teacher has {type(adapter.vae).__name__} and {type(adapter.text_encoder).__name__} "
                "(use --format merged or lora)")
        pipeline = WanPipeline(tokenizer=adapter.tokenizer, text_encoder=adapter.text_encoder, vae=adapter.vae,
                               scheduler=scheduler, transformer=folded, expand_timesteps=adapter.expand_timesteps)
        pipeline.save_pretrained(out, safe_serialization=True)
    _write_json(out / "export.json", record)
    return out


def export_student(student_folder: str | Path, out: str | Path, format: str, guidance_scale: float | None = None) -> Path:
    """Load the student in ``student_folder`` (with its teacher) and export it as ``format``."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"`format`={format!r} is not one of {EXPORT_FORMATS}")
    meta = read_student_meta(student_folder)
    adapter = load_teacher_for(meta, student_folder)
    unet, meta = load_student(student_folder, adapter)
    if adapter.family == "wan":
        return export_wan(unet, meta, adapter, out, format, guidance_scale)
    if guidance_scale is not None and format != "diffusers":
        raise ValueError("--guidance-scale only applies to --format diffusers (and to Wan students)")
    if format == "lora":
        return export_lora(unet, meta, out)
    if format == "merged":
        return export_merged(unet, meta, out)
    return export_diffusers_pipeline(unet, meta, adapter, out, guidance_scale)
