"""The trained model: a consistency student (the teacher's UNet plus the guidance-embedding layer) or a
fine-tuned full-step model (the teacher's UNet alone), with LoRA or not.

T2V-Turbo trains either LoRA adapters on a frozen copy of the teacher UNet (v1: rank 32 on the
attention projections for ModelScope, rank 64 on every Linear/Conv for VideoCrafter2) or the full
UNet (v2). In both cases the UNet gains ``time_cond_proj`` (in diffusers' UNet3DConditionModel:
``time_embedding.cond_proj``), which maps the guidance-scale embedding into the timestep
features. That layer is zero-initialised by the adapter, trained when ``train_guidance_layer``
is set, and always saved with the student.

A full-step model (``time_cond_proj_dim=None``: what VADER and InstructVideo fine-tune from a teacher)
has no guidance layer and samples like its teacher (DDIM + classifier-free guidance). For LoRA training
it can be a new module tree over the teacher's own frozen weights (``teacher_copy``, so the teacher's
memory is not doubled); otherwise it is an independent copy.

A student checkpoint is a folder:

- ``student.safetensors``: the LoRA weights under peft's names (``<module>.lora_A.weight``,
  ``<module>.lora_B.weight``) plus ``time_embedding.cond_proj.weight`` (a student); or, without LoRA,
  the full UNet state dict;
- ``student.json``: ``StudentMeta`` (teacher adapter and path, LoRA settings, guidance layer
  size, sampling defaults).

Loading is strict: the saved key set must equal the rebuilt student's.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Sequence

import torch
from torch import nn

from t2v_turbo.fileio import atomic_write, read_folder_json
from t2v_turbo.schema import Range

WEIGHTS_NAME = "student.safetensors"
META_NAME = "student.json"
#: peft adapter name used for the student's LoRA
ADAPTER_NAME = "default"
#: the files of a peft adapter folder (``PeftModel.save_pretrained`` / ``from_pretrained``)
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
#: module-name suffixes of the attention projections (T2V-Turbo MS preset)
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
#: the query/key/value projections only (VADER's LoRA targets)
QKV_PROJECTIONS = ("to_q", "to_k", "to_v")
#: module types the "every Linear/Conv" preset wraps (the public VideoCrafter2 recipe)
LINEAR_CONV_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass
class LoraSettings:
    """LoRA on the student UNet: y = W x + (alpha / rank) · B A dropout(x).

    ``target_modules`` is a preset name or an explicit list of module names under the UNet:

    - ``"attention"``: every ``to_q``/``to_k``/``to_v``/``to_out.0`` (T2V-Turbo MS, rank 32);
    - ``"attention_qkv"``: every ``to_q``/``to_k``/``to_v`` (VADER);
    - ``"all_linear_conv"``: every ``nn.Linear``/``nn.Conv2d``/``nn.Conv3d`` (the public
      VideoCrafter2 recipe, rank 64).

    The guidance-embedding layer is never a LoRA target: it is trained directly (or frozen)
    according to ``train_guidance_layer``.
    """

    rank: Annotated[int, Range(ge=1)] = 32
    alpha: Annotated[float, Range(gt=0)] = 32.0
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    target_modules: str | list[str] = "attention"

    @classmethod
    def preset(cls, name: str) -> "LoraSettings":
        """``"t2v_turbo_ms"`` (rank 32 on attention) or ``"t2v_turbo_vc2"`` (rank 64 on every Linear/Conv)."""
        presets = {
            "t2v_turbo_ms": cls(rank=32, alpha=32.0, dropout=0.1, target_modules="attention"),
            "t2v_turbo_vc2": cls(rank=64, alpha=64.0, dropout=0.1, target_modules="all_linear_conv"),
        }
        if name not in presets:
            raise ValueError(f"unknown LoRA preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_guidance_layer(unet: nn.Module) -> str | None:
    """Module name of the guidance-embedding layer (``time_embedding.cond_proj`` in diffusers), or None."""
    for name, module in unet.named_modules():
        if name.endswith("cond_proj") or name.endswith("time_cond_proj"):
            if isinstance(module, nn.Linear):
                return name
    return None


def guidance_layer_name(unet: nn.Module) -> str:
    """Module name of the guidance-embedding layer; a ``ValueError`` when the UNet has none."""
    name = find_guidance_layer(unet)
    if name is None:
        raise ValueError("the UNet has no guidance-embedding layer (time_embedding.cond_proj / time_cond_proj)")
    return name


def resolve_target_modules(unet: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Full module names LoRA wraps, in traversal order (guidance layer excluded)."""
    guidance = find_guidance_layer(unet)
    modules = dict(unet.named_modules())
    if target_modules in ("attention", "attention_qkv"):
        suffixes = ATTENTION_PROJECTIONS if target_modules == "attention" else QKV_PROJECTIONS
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n.endswith(suffixes)]
    elif target_modules == "all_linear_conv":
        names = [n for n, m in modules.items() if type(m) in LINEAR_CONV_TYPES]
    elif isinstance(target_modules, str):
        raise ValueError(
            f"`target_modules`={target_modules!r} is not a preset ('attention', 'attention_qkv', 'all_linear_conv'); "
            "pass a list of module names for an explicit choice"
        )
    else:
        names = list(target_modules)
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"LoRA target modules not found in the UNet: {unknown}")
    if guidance is not None:
        names = [n for n in names if n != guidance and not n.startswith(guidance + ".")]
    if not names:
        raise ValueError(f"LoRA `target_modules`={target_modules!r} matched no module of the UNet")
    return names


def inject_lora(unet: nn.Module, lora: LoraSettings, seed: int = 0) -> nn.Module:
    """Wrap the target modules with peft LoRA layers (B = 0, so the output is unchanged).

    A is drawn from a generator seeded with ``seed`` (forked RNG: the global RNG is untouched),
    so two builds of the same student are identical.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = resolve_target_modules(unet, lora.target_modules)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # a full-match regex over exact names: peft's list form matches by suffix
        target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
        init_lora_weights=True,
    )
    devices = [unet.device] if hasattr(unet, "device") and unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
    return unet


def has_lora(unet: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in unet.named_parameters())


def teacher_copy(unet: nn.Module, share_weights: bool) -> nn.Module:
    """A new module tree of the teacher's network. With ``share_weights`` every parameter and buffer is
    the teacher's own tensor (for LoRA on a frozen base: the teacher's memory is not doubled, and layers
    injected into the copy leave the teacher untouched); otherwise an independent deep copy."""
    memo = {id(t): t for t in itertools.chain(unet.parameters(), unet.buffers())} if share_weights else {}
    return copy.deepcopy(unet, memo)


def build_student(
    adapter,
    time_cond_proj_dim: int | None = 256,
    lora: LoraSettings | dict | None = None,
    train_guidance_layer: bool = True,
    seed: int = 0,
    share_teacher_weights: bool = False,
) -> nn.Module:
    """The trained UNet: the teacher's UNet + zero-initialised guidance layer (a student), or, with
    ``time_cond_proj_dim=None``, the teacher's UNet alone (a full-step model, ``teacher_copy``; with LoRA
    and ``share_teacher_weights`` its frozen base weights are the teacher's own tensors: for training,
    where nothing writes into them; never for a model whose LoRA is fused into its base); then

    - with ``lora``: base weights frozen, LoRA injected and trainable;
    - without: every weight trainable (full fine-tuning, as T2V-Turbo v2).

    The guidance layer is trainable iff ``train_guidance_layer``; when frozen it stays at its
    deterministic zero initialisation (never a random, unsaved one).
    """
    if isinstance(lora, dict):
        lora = LoraSettings(**lora)
    if time_cond_proj_dim is None:
        unet = teacher_copy(adapter.unet, share_weights=share_teacher_weights and lora is not None).eval()
    else:
        unet = adapter.build_student_unet(time_cond_proj_dim)
    if lora is not None:
        unet.requires_grad_(False)
        inject_lora(unet, lora, seed=seed)
    else:
        unet.requires_grad_(True)
    if time_cond_proj_dim is not None:
        dict(unet.named_modules())[guidance_layer_name(unet)].requires_grad_(train_guidance_layer)
    return unet


def trainable_parameter_names(unet: nn.Module) -> list[str]:
    return [name for name, param in unet.named_parameters() if param.requires_grad]


def student_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: LoRA weights (peft names, no adapter name) + the guidance layer (when
    there is one), or the full state dict for a model without LoRA."""
    if not has_lora(unet):
        return {k: v.detach() for k, v in unet.state_dict().items()}
    guidance = find_guidance_layer(unet)
    guidance_key = guidance + ".weight" if guidance is not None else None
    out = {}
    for name, tensor in unet.state_dict().items():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{ADAPTER_NAME}.", ".")] = tensor.detach()
        elif name == guidance_key:
            out[name] = tensor.detach()
    return out


@dataclasses.dataclass
class StudentMeta:
    """``student.json``: what is needed to rebuild and sample the trained model.

    ``teacher_adapter`` is the dotted path of the adapter class whose ``from_pretrained`` loads
    ``teacher_path``. The sampling defaults are what the model was trained for: ``guidance_scale``
    and ``num_inference_steps`` (the run's validation settings), the geometry of its training clips
    (``num_frames``, ``height``, ``width``, ``fps``), the guidance range [w_min, w_max] it saw
    (``guidance_range``) and whether its videos are written losslessly (``lossless_video``: small
    saturated worlds lose colour to yuv420p). Geometry left ``None`` (students saved before these
    fields existed) falls back to the teacher's defaults. ``time_cond_proj_dim`` None marks a full-step
    model (no guidance layer): it samples with DDIM + classifier-free guidance, ``guidance_scale`` then
    being the CFG scale and ``num_inference_steps`` the DDIM steps; a student samples with the multistep
    consistency sampler.
    """

    teacher_adapter: str
    teacher_path: str
    family: str
    time_cond_proj_dim: int | None = 256
    lora: dict | None = None
    train_guidance_layer: bool = True
    guidance_scale: float = 7.5
    num_inference_steps: int = 4
    num_ddim_timesteps: int = 50
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int | None = None
    guidance_range: list[float] | None = None
    lossless_video: bool = False
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def is_student(self) -> bool:
        """A consistency student (guidance layer, few-step sampler), not a full-step model."""
        return self.time_cond_proj_dim is not None

    @classmethod
    def for_adapter(cls, adapter, **kwargs) -> "StudentMeta":
        """Meta of a student on ``adapter``; geometry not given is the teacher's default."""
        adapter_cls = type(adapter)
        lora = kwargs.pop("lora", None)
        if isinstance(lora, LoraSettings):
            lora = lora.to_dict()
        for key in ("num_frames", "height", "width", "fps"):
            if kwargs.get(key) is None:
                kwargs[key] = getattr(adapter, f"default_{key}", None)
        kwargs.setdefault("lossless_video", bool(getattr(adapter, "lossless_video", False)))
        return cls(
            teacher_adapter=f"{adapter_cls.__module__}.{adapter_cls.__qualname__}",
            teacher_path=str(getattr(adapter, "source", None)),
            family=adapter.family,
            lora=lora,
            **kwargs,
        )

    def guidance_warning(self, guidance_scale: float) -> str | None:
        """A sentence when ``guidance_scale`` lies outside the range the student was trained on."""
        if self.guidance_range is None:
            return None
        low, high = self.guidance_range
        if low <= guidance_scale <= high:
            return None
        return (f"guidance scale {guidance_scale:g} is outside the range the student was trained on "
                f"[{low:g}, {high:g}]; its output there is an extrapolation (default {self.guidance_scale:g})")

    @classmethod
    def from_dict(cls, data: dict, source: str = META_NAME) -> "StudentMeta":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; expected a subset of {sorted(fields)}")
        return cls(**data)


def save_student(folder: str | Path, unet: nn.Module, meta: StudentMeta | dict,
                 weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``student.safetensors`` and ``student.json`` into ``folder`` (each atomically). ``weights``: the
    tensors to write when ``student_state_dict(unet)`` cannot give them whole (a network sharded over processes,
    gathered by the trainer); by default that state dict."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(meta, dict):
        meta = StudentMeta.from_dict(meta)
    if (meta.lora is not None) != has_lora(unet):
        raise ValueError(
            f"student meta says lora={meta.lora!r} but the UNet {'has' if has_lora(unet) else 'has no'} LoRA layers"
        )
    weights = student_state_dict(unet) if weights is None else weights
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in weights.items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(dataclasses.asdict(meta), indent=2, sort_keys=True) + "\n"
    atomic_write(folder / META_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def read_student_meta(folder: str | Path) -> StudentMeta:
    return StudentMeta.from_dict(read_folder_json(folder, META_NAME, "student checkpoint"),
                                 source=str(Path(folder) / META_NAME))


def resolve_teacher_path(meta: StudentMeta, student_folder: str | Path | None = None) -> str:
    """Where the student's teacher is: a relative ``teacher_path`` is looked up beside the student
    folder first (a shipped student records ``../teacher`` so it works from any checkout), then
    taken as given (relative to the working directory, or a hub id)."""
    path = Path(meta.teacher_path)
    if student_folder is not None and not path.is_absolute() and (Path(student_folder) / path).exists():
        return str(Path(student_folder) / path)
    return meta.teacher_path


def load_teacher_for(meta: StudentMeta, student_folder: str | Path | None = None, **kwargs: Any):
    """The teacher adapter named in a student's meta, loaded with ``from_pretrained``.

    ``teacher_adapter`` comes from a file that may be someone else's: it must name a
    ``TeacherAdapter`` class in the trusted modules (``t2v_turbo.config.resolve_component``).
    """
    from t2v_turbo.adapters.base import TeacherAdapter
    from t2v_turbo.config import resolve_component

    where = f"{Path(student_folder) / META_NAME if student_folder is not None else META_NAME}: teacher_adapter"
    adapter_cls = resolve_component(meta.teacher_adapter, where)
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, TeacherAdapter)):
        raise ValueError(f"{where} {meta.teacher_adapter!r} is not a TeacherAdapter class")
    return adapter_cls.from_pretrained(resolve_teacher_path(meta, student_folder), **kwargs)


def fuse_lora(unet: nn.Module) -> nn.Module:
    """Merge every LoRA delta (alpha / rank) B A into its base weight and put the base layers back
    in place of peft's wrappers (in place). The UNet computes the same function (to float rounding)
    at the cost of a plain UNet call: unmerged, each call also runs every LoRA branch."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name), child, module.get_base_layer())
    return unet


def load_student(folder: str | Path, adapter) -> tuple[nn.Module, StudentMeta]:
    """Rebuild the student saved in ``folder`` on top of ``adapter``'s teacher; returns (unet, meta).

    Strict: the saved tensors must be exactly the rebuilt student's checkpoint keys, with the
    same shapes. The UNet is returned in eval mode with no parameter requiring gradients.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_student_meta(folder)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"student checkpoint {folder.resolve()} has {META_NAME} but no {WEIGHTS_NAME}")
    if meta.family != adapter.family:
        raise ValueError(f"{folder / META_NAME}: student of family {meta.family!r} cannot load on a {adapter.family!r} teacher")
    lora = LoraSettings(**meta.lora) if meta.lora is not None else None
    unet = build_student(adapter, meta.time_cond_proj_dim, lora=lora, train_guidance_layer=False)
    saved = load_file(str(weights_path))
    expected = student_state_dict(unet)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise RuntimeError(f"{weights_path}: keys do not match the student; missing={missing[:10]} unexpected={unexpected[:10]}")
    params = {name.replace(f".{ADAPTER_NAME}.", "."): t for name, t in unet.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        for key, value in saved.items():
            if params[key].shape != value.shape:
                raise RuntimeError(f"{weights_path}: {key} has shape {tuple(value.shape)}, the student expects {tuple(params[key].shape)}")
            params[key].copy_(value)
    unet.requires_grad_(False)
    return unet.eval(), meta
