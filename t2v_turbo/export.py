"""Export a trained model (a student, or a fine-tuned full-step model) for use outside this toolkit.

Three formats (``t2v-turbo export STUDENT_DIR --format ... --out DIR``), each a folder with a model
card (``README.md``: base model, recipe, sampling settings, a stock usage snippet, metrics) and
``export.json`` (the student's meta):

- ``lora``: a peft adapter folder on the teacher's UNet (``adapter_config.json`` +
  ``adapter_model.safetensors``), loaded by stock peft with
  ``PeftModel.from_pretrained(teacher_unet, folder)``. The teacher UNet has no guidance layer and
  stock pipelines pass no ``timestep_cond``, so the guidance scale w is folded as in the diffusers
  format (below): ``time_embedding.linear_1`` is saved whole as a peft ``modules_to_save`` module
  (its LoRA merged, the guidance shift in its bias) and the other targets as LoRA A/B pairs.
  ``scheduler/`` holds the ``LCMScheduler`` to run it with (``guidance_scale=1``). A fine-tuned
  full-step model (no guidance layer) is saved as plain LoRA A/B pairs with the teacher's
  ``DDIMScheduler``, run with classifier-free guidance.
- ``merged``: a diffusers ``UNet3DConditionModel`` folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) with the LoRA merged into the base weights,
  W' = W + (alpha / rank) B A, keeping ``time_cond_proj_dim`` and the guidance layer (a sampler
  passes the guidance embedding as ``timestep_cond``).
- ``diffusers``: a complete ``TextToVideoSDPipeline`` folder that stock diffusers runs with
  ``guidance_scale=1`` (a fine-tuned full-step model keeps the teacher's ``DDIMScheduler`` and runs with
  its CFG scale). Stock pipelines pass no ``timestep_cond``, so a student's chosen guidance scale w
  is folded into the UNet: diffusers computes
  ``linear_1(t_emb + cond_proj(emb(w)))`` = ``W1 t_emb + (b1 + W1 cond_proj(emb(w)))``, a
  constant shift of ``linear_1``'s bias; the folded UNet has no ``cond_proj``. The scheduler is an
  ``LCMScheduler`` on the teacher's betas with ``original_inference_steps`` = the distillation
  grid size (50) and ``timestep_scaling`` 10, which is this toolkit's sampler with
  ``spacing="lcm"``.

Every export is written into a new folder beside ``out`` and moved into place
(``t2v_turbo.fileio.write_folder``); an existing non-empty ``out`` is replaced only with
``overwrite=True``.

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
import re
from pathlib import Path

import torch
from torch import nn

from t2v_turbo import __version__
from t2v_turbo.adapters.base import move_module
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.fileio import write_folder
from t2v_turbo.student import (
    ADAPTER_NAME,
    PEFT_WEIGHTS_NAME,
    StudentMeta,
    has_lora,
    load_student,
    load_teacher_for,
    read_student_meta,
)

EXPORT_FORMATS = ("lora", "merged", "diffusers")
MODEL_CARD_NAME = "README.md"
#: the layer that receives t_emb + cond_proj(emb(w)) in diffusers' UNet3DConditionModel
GUIDANCE_TARGET = "time_embedding.linear_1"
#: where a run config is found relative to a student folder (final student, checkpoint's student/)
CONFIG_CANDIDATES = ("config.yaml", "../config.yaml")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
    """A plain ``UNet3DConditionModel`` (or ``WanTransformer3DModel``) equal to the LoRA model (loaded strictly)."""
    from diffusers import UNet3DConditionModel, WanTransformer3DModel

    model_cls = WanTransformer3DModel if isinstance(unet, WanTransformer3DModel) else UNet3DConditionModel
    merged = model_cls.from_config(unet.config)
    merged.load_state_dict(merged_state_dict(unet) if has_lora(unet) else unet.state_dict(), strict=True)
    param = next(unet.parameters())
    return move_module(merged, device=param.device, dtype=param.dtype).eval()


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


def peft_adapter_tensors(unet: nn.Module, guidance_scale: float | None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(LoRA target module names, tensors under peft's saved names) of a LoRA model, as an adapter on its
    teacher's UNet:

    - ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` for every LoRA target (a student:
      every one but ``time_embedding.linear_1``);
    - a student only: ``base_model.model.time_embedding.linear_1.weight`` / ``.bias`` (a ``modules_to_save``
      module): W1' = W1 (+ its LoRA delta), b1' = b1 + W1' cond_proj(emb(w)), w = ``guidance_scale``.
      A full-step model (``guidance_scale`` None) has no guidance layer and nothing is folded.
    """
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    fold = guidance_scale is not None
    targets, tensors = [], {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and not (fold and name == GUIDANCE_TARGET):
            targets.append(name)
            tensors[f"{prefix}{name}.lora_A.weight"] = module.lora_A[ADAPTER_NAME].weight
            tensors[f"{prefix}{name}.lora_B.weight"] = module.lora_B[ADAPTER_NAME].weight
    if fold:
        linear_1 = unet.get_submodule(GUIDANCE_TARGET)
        with torch.no_grad():
            if isinstance(linear_1, LoraLayer):
                base = linear_1.get_base_layer()
                weight = base.weight + linear_1.get_delta_weight(ADAPTER_NAME).to(base.weight.dtype)
            else:
                base, weight = linear_1, linear_1.weight
            tensors[f"{prefix}{GUIDANCE_TARGET}.weight"] = weight
            cond_proj = unet.time_embedding.cond_proj
            if cond_proj is None:
                raise ValueError("the UNet has no guidance layer (time_cond_proj_dim is None): nothing to fold")
            tensors[f"{prefix}{GUIDANCE_TARGET}.bias"] = folded_linear_bias(base.bias, weight, cond_proj.weight,
                                                                            guidance_scale)
    return targets, {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def sampling_scheduler(adapter, meta: StudentMeta):
    """The diffusers scheduler a stock pipeline runs the model with: ``LCMScheduler`` for a student,
    the teacher's own ``DDIMScheduler`` for a fine-tuned full-step model."""
    from diffusers import DDIMScheduler

    return lcm_scheduler_for(adapter, meta) if meta.is_student else DDIMScheduler.from_config(adapter.scheduler_config)


def export_lora(unet: nn.Module, meta: StudentMeta, adapter, out: str | Path, guidance_scale: float | None = None) -> Path:
    """Write the peft adapter folder of a LoRA model into the (new, empty) folder ``out``."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    if not has_lora(unet) or meta.lora is None:
        raise ValueError("`--format lora` needs a LoRA student; this student is fully fine-tuned (use merged or diffusers)")
    if adapter.family != "diffusers":
        raise ValueError(f"`--format lora` writes a peft adapter for diffusers' UNet3DConditionModel; this student's teacher is "
                         f"{adapter.family!r} (VideoCrafter2 students: `t2v-turbo convert lora-list`, the released LoRA format)")
    out = Path(out)
    guidance_scale = meta.guidance_scale if guidance_scale is None else guidance_scale
    targets, tensors = peft_adapter_tensors(unet, guidance_scale if meta.is_student else None)
    config = LoraConfig(
        r=int(meta.lora["rank"]), lora_alpha=float(meta.lora["alpha"]), lora_dropout=0.0,
        target_modules="^(" + "|".join(re.escape(n) for n in targets) + ")$",  # full-match regex over exact names
        modules_to_save=[GUIDANCE_TARGET] if meta.is_student else None, base_model_name_or_path=meta.teacher_path,
    )
    config.save_pretrained(str(out))
    save_file(tensors, str(out / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    sampling_scheduler(adapter, meta).save_pretrained(str(out / "scheduler"))
    _write_json(out / "export.json", {"format": "lora", "folded_guidance_scale": guidance_scale if meta.is_student else None,
                                      "run_with": _run_with(meta, guidance_scale), "student": dataclasses.asdict(meta)})
    return out


def _run_with(meta: StudentMeta, guidance_scale: float) -> dict:
    """The stock pipeline's call settings: guidance folded (scale 1) for a student, CFG for a full-step model."""
    return {"guidance_scale": 1.0 if meta.is_student else guidance_scale, "num_inference_steps": meta.num_inference_steps}


def export_merged(unet: nn.Module, meta: StudentMeta, out: str | Path) -> Path:
    out = Path(out)
    merge_student(unet).save_pretrained(out, safe_serialization=True)
    _write_json(out / "export.json", {"format": "merged", "student": dataclasses.asdict(meta)})
    return out


def export_diffusers_pipeline(unet: nn.Module, meta: StudentMeta, adapter, out: str | Path, guidance_scale: float | None = None) -> Path:
    """A ``TextToVideoSDPipeline`` folder. A student gets its guidance scale folded in and an
    ``LCMScheduler`` (run it with ``guidance_scale=1``); a fine-tuned full-step model keeps the teacher's
    ``DDIMScheduler`` and is run with classifier-free guidance at ``guidance_scale`` (its CFG scale)."""
    from diffusers import TextToVideoSDPipeline

    if adapter.family != "diffusers":
        raise ValueError(f"`--format diffusers` needs a diffusers-layout teacher; this student's teacher is {adapter.family!r}")
    guidance_scale = meta.guidance_scale if guidance_scale is None else guidance_scale
    network = fold_guidance_scale(unet, guidance_scale) if meta.is_student else merge_student(unet)
    scheduler, run_with = sampling_scheduler(adapter, meta), _run_with(meta, guidance_scale)
    pipeline = TextToVideoSDPipeline(
        vae=adapter.vae,
        text_encoder=adapter.text_encoder,
        tokenizer=adapter.tokenizer,
        unet=network,
        scheduler=scheduler,
    )
    out = Path(out)
    pipeline.save_pretrained(out, safe_serialization=True)
    _write_json(
        out / "export.json",
        {
            "format": "diffusers",
            "folded_guidance_scale": guidance_scale if meta.is_student else None,
            "run_with": run_with,
            "student": dataclasses.asdict(meta),
        },
    )
    return out


def wan_diffusers_lora_state_dict(unet: nn.Module, guidance_scale: float | None) -> tuple[dict[str, torch.Tensor], dict]:
    """A Wan LoRA model in diffusers' format: (state dict, LoRA config) for
    ``WanPipeline.save_lora_weights``, which prefixes the keys with ``transformer.``.

    Every LoRA layer keeps its A and B (peft names without the adapter name). A full-step model
    (``guidance_scale`` None) is that alone. For a student every layer gets a zero
    ``lora_B.bias`` and the guidance scale is folded into one more LoRA layer on
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
        if guidance_scale is not None:
            state[f"{name}.lora_B.bias"] = torch.zeros(b.shape[0], dtype=b.dtype)
    if guidance_scale is None:
        return state, {"r": rank, "lora_alpha": alpha, "target_modules": sorted(lora_modules), "lora_dropout": 0.0}
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
    """A Wan model as ``lora`` (diffusers' ``pytorch_lora_weights.safetensors``), ``merged`` (a stock
    ``WanTransformer3DModel``, LoRA merged), both with the ``scheduler/`` to sample with, or ``diffusers``
    (a stock ``WanPipeline``). A student gets its guidance folded in and ``FlowMatchLCMScheduler``; a
    fine-tuned full-step model (no guidance layer) keeps the teacher's own scheduler and is run with
    classifier-free guidance at ``guidance_scale``."""
    from diffusers import FlowMatchLCMScheduler, WanPipeline

    from t2v_turbo.pipeline import teacher_flow_scheduler

    out = Path(out)
    guidance_scale = meta.guidance_scale if guidance_scale is None else guidance_scale
    if meta.is_student:
        scheduler = FlowMatchLCMScheduler(num_train_timesteps=adapter.num_train_timesteps, shift=adapter.flow_shift)
        run_with = {"guidance_scale": 1.0, "num_inference_steps": meta.num_inference_steps, "spacing": "lcm"}
    else:
        scheduler = teacher_flow_scheduler(adapter)
        run_with = {"guidance_scale": guidance_scale, "num_inference_steps": meta.num_inference_steps}
    folded = guidance_scale if meta.is_student else None
    record = {"format": format, "folded_guidance_scale": folded, "run_with": run_with,
              "student": dataclasses.asdict(meta)}
    if format == "lora":
        out.mkdir(parents=True, exist_ok=True)
        state, config = wan_diffusers_lora_state_dict(unet, folded)
        WanPipeline.save_lora_weights(out, transformer_lora_layers=state, transformer_lora_adapter_metadata=config)
        scheduler.save_pretrained(out / "scheduler")
        record["diffusers_lora"] = {"file": "pytorch_lora_weights.safetensors", "base": meta.teacher_path,
                                    "scheduler": f"scheduler/ ({type(scheduler).__name__})"}
        _write_json(out / "export.json", record)
        return out
    network = fold_guidance_scale(unet, guidance_scale) if meta.is_student else merge_student(unet)
    if format == "merged":
        network.save_pretrained(out, safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
    else:
        if not (adapter.causal_vae and adapter.t5_text):
            raise ValueError(
                f"`--format diffusers` writes a stock WanPipeline, which needs AutoencoderKLWan and a T5 text encoder; "
                f"this teacher has {type(adapter.vae).__name__} and {type(adapter.text_encoder).__name__} "
                "(use --format merged or lora)")
        pipeline = WanPipeline(tokenizer=adapter.tokenizer, text_encoder=adapter.text_encoder, vae=adapter.vae,
                               scheduler=scheduler, transformer=network, expand_timesteps=adapter.expand_timesteps)
        pipeline.save_pretrained(out, safe_serialization=True)
    _write_json(out / "export.json", record)
    return out


# ---- model card --------------------------------------------------------------------------
def _run_config(student_folder: Path) -> tuple[Path | None, str | None]:
    for name in CONFIG_CANDIDATES:
        path = student_folder / name
        if path.is_file():
            return path, path.read_text(encoding="utf-8")
    return None, None


def _metric_rows(path: Path) -> list[tuple[str, str]]:
    """(name, value) of the numbers in a metrics JSON, one nesting level deep (e.g. MiniBench's
    ``overall.total``); lists (per-video records) are left out."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for key, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((key, f"{value:.4g}"))
        elif isinstance(value, dict):
            rows += [(f"{key}.{k}", f"{v:.4g}") for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return rows


def _wan_usage(format: str, meta: StudentMeta, guidance_scale: float, folder_name: str) -> str:
    """Stock diffusers snippets for a Wan student's exports (guidance folded in every format)."""
    call = (f'frames = pipe("a prompt", num_inference_steps={meta.num_inference_steps}, guidance_scale=1.0, '
            f"num_frames={meta.num_frames}, height={meta.height}, width={meta.width}).frames[0]")
    folded = f"# guidance w = {guidance_scale:g} is folded into time_embedder.linear_1: run with guidance_scale=1"
    if format == "diffusers":
        return f"""```python
from diffusers import WanPipeline

pipe = WanPipeline.from_pretrained("{folder_name}")  # FlowMatchLCMScheduler inside
{folded}
{call}
```"""
    if format == "lora":
        return f"""```python
from diffusers import FlowMatchLCMScheduler, WanPipeline

pipe = WanPipeline.from_pretrained("{meta.teacher_path}")  # the base model (teacher)
pipe.load_lora_weights("{folder_name}")  # pytorch_lora_weights.safetensors (with the guidance as a LoRA bias)
pipe.scheduler = FlowMatchLCMScheduler.from_pretrained("{folder_name}", subfolder="scheduler")
{folded}
{call}
```"""
    return f"""```python
from diffusers import FlowMatchLCMScheduler, WanPipeline, WanTransformer3DModel

transformer = WanTransformer3DModel.from_pretrained("{folder_name}")  # LoRA merged, guidance folded
pipe = WanPipeline.from_pretrained("{meta.teacher_path}", transformer=transformer)
pipe.scheduler = FlowMatchLCMScheduler.from_pretrained("{folder_name}", subfolder="scheduler")
{folded}
{call}
```"""


def _wan_full_step_usage(format: str, meta: StudentMeta, guidance_scale: float, folder_name: str) -> str:
    """Stock diffusers snippets for a fine-tuned full-step Wan model: the teacher's scheduler, CFG."""
    call = (f'frames = pipe("a prompt", num_inference_steps={meta.num_inference_steps}, '
            f"guidance_scale={guidance_scale:g}, num_frames={meta.num_frames}, height={meta.height}, "
            f"width={meta.width}).frames[0]")
    load = {
        "diffusers": f'pipe = WanPipeline.from_pretrained("{folder_name}")  # the teacher\'s scheduler inside',
        "lora": f'pipe = WanPipeline.from_pretrained("{meta.teacher_path}")  # the base model (teacher)\n'
                f'pipe.load_lora_weights("{folder_name}")  # pytorch_lora_weights.safetensors',
        "merged": f'transformer = WanTransformer3DModel.from_pretrained("{folder_name}")  # LoRA merged\n'
                  f'pipe = WanPipeline.from_pretrained("{meta.teacher_path}", transformer=transformer)',
    }[format]
    return f"""```python
from diffusers import WanPipeline, WanTransformer3DModel

{load}
# a full-step model: the teacher's sampler with classifier-free guidance (scale {guidance_scale:g})
{call}
```"""


def _usage(format: str, meta: StudentMeta, guidance_scale: float, folder_name: str) -> str:
    if meta.family == "wan":
        return (_wan_usage if meta.is_student else _wan_full_step_usage)(format, meta, guidance_scale, folder_name)
    geometry = f"num_frames={meta.num_frames}, height={meta.height}, width={meta.width}"
    steps = meta.num_inference_steps
    if meta.is_student:
        scheduler, call = "LCMScheduler", f"guidance_scale=1.0, {geometry}"
        note = f"# guidance w = {guidance_scale:g} is folded into the UNet: run with guidance_scale=1"
    else:
        scheduler, call = "DDIMScheduler", f"guidance_scale={guidance_scale:g}, {geometry}"
        note = f"# a full-step model: DDIM with classifier-free guidance (scale {guidance_scale:g})"
    if format == "diffusers":
        return f"""```python
from diffusers import TextToVideoSDPipeline

pipe = TextToVideoSDPipeline.from_pretrained("{folder_name}")
{note}
frames = pipe("a prompt", num_inference_steps={steps}, {call}).frames
```"""
    if format == "lora":
        return f"""```python
from diffusers import {scheduler}, TextToVideoSDPipeline
from peft import PeftModel

pipe = TextToVideoSDPipeline.from_pretrained("{meta.teacher_path}")  # the base model (teacher)
pipe.unet = PeftModel.from_pretrained(pipe.unet, "{folder_name}").merge_and_unload()
pipe.scheduler = {scheduler}.from_pretrained("{folder_name}", subfolder="scheduler")
{note}
frames = pipe("a prompt", num_inference_steps={steps}, {call}).frames
```

`merge_and_unload()` folds the LoRA into the weights (one plain UNet call per step); leave it out to
keep the adapter switchable."""
    if not meta.is_student:
        return f"""```python
from diffusers import UNet3DConditionModel

unet = UNet3DConditionModel.from_pretrained("{folder_name}")  # LoRA merged; the teacher's architecture
```

Put it into the teacher's `TextToVideoSDPipeline` (`pipe.unet = unet`) and sample with DDIM and
classifier-free guidance ({steps} steps, scale {guidance_scale:g})."""
    return f"""```python
from diffusers import UNet3DConditionModel

unet = UNet3DConditionModel.from_pretrained("{folder_name}")  # LoRA merged, guidance layer kept
# one consistency step: eps = unet(latents, t, encoder_hidden_states=text, timestep_cond=w_emb).sample,
# with w_emb the {meta.time_cond_proj_dim}-d sinusoidal embedding of w (t2v_turbo.diffusion.solver.guidance_scale_embedding)
```

Stock `TextToVideoSDPipeline` passes no `timestep_cond`; for it, export with `--format diffusers`
(guidance folded in) instead."""


#: how a model card names the recipe of a run config's objective component
RECIPES = {
    "T2VTurboObjective": "T2V-Turbo: latent consistency distillation with mixed reward feedback",
    "VADERObjective": "VADER: reward gradients through the sampling chain",
    "InstructVideoObjective": "InstructVideo: reward fine-tuning as editing",
}


def _recipe_rows(config: dict) -> list[tuple[str, str]]:
    """(recipe, training) rows from a run config; configs of the layout before objectives were components
    (a ``distill:`` section) are T2V-Turbo runs."""
    objective = config.get("objective") or {"_component_": "T2VTurboObjective", **(config.get("distill") or {})}
    name = str(objective.get("_component_", "")).rpartition(".")[2]
    rewards = ", ".join(f"{r['name']} (weight {r.get('weight', 1.0)})" for r in config.get("rewards", [])) or "none"
    training = (f"{config['train']['max_steps']} steps, batch {config['dataloader']['batch_size']}, "
                f"lr {config['optimizer'].get('lr')}")
    if "target" in objective:
        training += f", target {objective['target']}"
    return [("recipe", f"{RECIPES.get(name, name)}; rewards: {rewards}"), ("training", training)]


def model_card(format: str, meta: StudentMeta, student_folder: Path, guidance_scale: float | None,
               metrics: list[Path] = (), folder_name: str = "path/to/this/folder") -> str:
    """``README.md`` of an export folder: what the model is, how it was made, how to run it."""
    import yaml

    config_path, config_text = _run_config(student_folder)
    config = yaml.safe_load(config_text) if config_text else None
    guidance = meta.guidance_scale if guidance_scale is None else guidance_scale
    lora = meta.lora
    student_kind = (f"LoRA rank {lora['rank']}, alpha {lora['alpha']} on `{lora['target_modules']}`" if lora
                    else "full fine-tuning")
    if meta.is_student:
        rows = [
            ("base model (teacher)", f"`{meta.teacher_path}` ({meta.family})"),
            ("student", f"{student_kind}; guidance-embedding layer of {meta.time_cond_proj_dim} inputs"),
            ("sampling", f"{meta.num_inference_steps} steps, guidance w = {guidance:g}"
                         + ("" if format == "merged" and meta.family != "wan" else " (folded into the weights)")),
            ("trained guidance range", "[{:g}, {:g}]".format(*meta.guidance_range) if meta.guidance_range else "not recorded"),
            ("geometry", f"{meta.num_frames} frames, {meta.height}x{meta.width} pixels, {meta.fps} fps"),
            ("distillation grid", f"{meta.num_ddim_timesteps} DDIM steps, timestep scaling {meta.timestep_scaling:g}, "
                                  f"sigma_data {meta.sigma_data:g}"),
        ]
    else:
        rows = [
            ("base model (teacher)", f"`{meta.teacher_path}` ({meta.family})"),
            ("model", f"the teacher fine-tuned ({student_kind}); no guidance layer"),
            ("sampling", (f"{'the teacher scheduler' if meta.family == 'wan' else 'DDIM'} {meta.num_inference_steps} "
                          f"steps, classifier-free guidance scale {guidance:g}")),
            ("geometry", f"{meta.num_frames} frames, {meta.height}x{meta.width} pixels, {meta.fps} fps"),
        ]
    rows += _recipe_rows(config) if config else [("recipe", "not recorded (no run config beside the model folder)")]
    peft_lora = format == "lora" and meta.family != "wan"  # Wan LoRAs are in diffusers' format
    tags = ["text-to-video", "t2v-turbo"] + (["consistency-distillation"] if meta.is_student else ["reward-fine-tuning"])
    tags += ["lora", "peft"] if peft_lora else []
    lines = [
        "---",
        f"library_name: {'peft' if peft_lora else 'diffusers'}",
        f"base_model: {meta.teacher_path}",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {student_folder.resolve().name}: a {'T2V-Turbo student' if meta.is_student else 'fine-tuned model'} "
        f"({format} export)",
        "",
        (f"A {meta.num_inference_steps}-step consistency student of `{meta.teacher_path}`" if meta.is_student else
         f"`{meta.teacher_path}` fine-tuned with reward feedback (a full-step model)")
        + f", exported by t2v-turbo {__version__} (`t2v-turbo export --format {format}`).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Usage (stock diffusers / peft)",
        "",
        _usage(format, meta, guidance, folder_name),
        "",
        "## Evaluation",
        "",
    ]
    metric_lines = []
    for path in metrics:
        metric_lines += [f"`{Path(path).name}`:", "", "| metric | value |", "|---|---|"]
        metric_lines += [f"| {k} | {v} |" for k, v in _metric_rows(Path(path))] + [""]
    lines += metric_lines or ["Not evaluated at export time (`t2v-turbo export --metrics FILE.json` adds results, e.g. "
                              "MiniBench's or VBench's report JSON).", ""]
    if config_text:
        lines += ["## Run config", "", f"`{config_path.name}` of the training run:", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def export_student(student_folder: str | Path, out: str | Path, format: str, guidance_scale: float | None = None,
                   overwrite: bool = False, metrics: list[str | Path] = ()) -> Path:
    """Load the student in ``student_folder`` (with its teacher) and export it as ``format`` into
    ``out`` with a model card; ``metrics`` are JSON result files quoted in the card."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"`format`={format!r} is not one of {EXPORT_FORMATS}")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # before loading anything
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    metrics = [Path(m) for m in metrics]
    for path in metrics:
        if not path.is_file():
            raise FileNotFoundError(f"metrics file {path.resolve()} not found")
    student_folder = Path(student_folder)
    meta = read_student_meta(student_folder)
    if guidance_scale is not None and format == "merged" and meta.family != "wan":
        raise ValueError("--guidance-scale applies to --format lora and diffusers (merged keeps the guidance layer), "
                         "and to every format of a Wan student")
    adapter = load_teacher_for(meta, student_folder)
    unet, meta = load_student(student_folder, adapter)

    def write(folder: Path) -> None:
        if adapter.family == "wan":
            export_wan(unet, meta, adapter, folder, format, guidance_scale)
        elif format == "lora":
            export_lora(unet, meta, adapter, folder, guidance_scale)
        elif format == "merged":
            export_merged(unet, meta, folder)
        else:
            export_diffusers_pipeline(unet, meta, adapter, folder, guidance_scale)
        folds = format != "merged" or (adapter.family == "wan" and meta.is_student)
        card = model_card(format, meta, student_folder, guidance_scale if folds else None, metrics, folder_name=str(out))
        (folder / MODEL_CARD_NAME).write_text(card, encoding="utf-8")

    return write_folder(out, write, overwrite=overwrite)
