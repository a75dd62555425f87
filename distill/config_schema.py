"""The schema of a run config: each plain section is a dataclass whose annotations give the type,
range or choices of every key and whose defaults are the run defaults (``t2v_turbo.schema``).

Component nodes (``teacher``, ``data``, ``model``, ``objective``, ``optimizer``) are checked against
their callable's signature instead; an objective is itself a dataclass whose annotations are its schema
(``distill.objectives.base``), ``model.lora`` is checked against ``LoraSettings``, and ``OptimizerArgs``
adds the ranges of the optimizer arguments common to torch optimizers.

``upgrade_legacy_layout`` reads a config of the layout before objectives were components (``student:``,
``distill:``, the decode keys in ``reward_options:``) as the current one.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from t2v_turbo.config import COMPONENT_KEY
from t2v_turbo.schema import Range
from t2v_turbo.student import LoraSettings

DtypeName = Literal["float32", "bfloat16", "float16"]
PositiveInt = Annotated[int, Range(ge=1)]
Count = Annotated[int, Range(ge=0)]


@dataclasses.dataclass
class RewardSpec:
    """One entry of ``rewards``: a registered reward, its builder's arguments and its loss form
    (``distill.objectives.rewarding.reward_loss``: weight (target - r) or weight |target - r|)."""

    name: str
    weight: float = 1.0
    args: dict | None = None
    loss: Literal["linear", "abs"] = "linear"
    target: float = 0.0


@dataclasses.dataclass
class RewardOptions:
    dtype: DtypeName = "float32"


#: the default ``model:`` node: a LoRA consistency student on the teacher (T2V-Turbo MS settings)
DEFAULT_MODEL = {COMPONENT_KEY: "distill.model.from_teacher", "time_cond_proj_dim": 256, "train_guidance_layer": True,
                 "lora": dataclasses.asdict(LoraSettings(dropout=0.1))}
#: the default ``objective:`` node (its keys are filled from the class's defaults when a config is resolved)
DEFAULT_OBJECTIVE = {COMPONENT_KEY: "distill.objectives.T2VTurboObjective"}


@dataclasses.dataclass
class DataloaderSection:
    batch_size: PositiveInt = 1
    num_workers: Count = 0
    shuffle: bool = True


@dataclasses.dataclass
class LrSchedulerSection:
    #: a diffusers ``get_scheduler`` name (checked against diffusers' list)
    name: str = "constant"
    warmup_steps: Count = 0


@dataclasses.dataclass
class TrainSection:
    max_steps: PositiveInt = 10000
    gradient_accumulation_steps: PositiveInt = 1
    max_grad_norm: Annotated[float, Range(ge=0, note="0 disables clipping")] = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    teacher_dtype: DtypeName = "float32"
    checkpoint_every: Annotated[int, Range(ge=0, note="0 writes no checkpoints")] = 500
    keep_checkpoints: PositiveInt = 3
    log_every: PositiveInt = 10
    #: "auto" is accelerate's choice
    device: Literal["auto", "cpu"] = "auto"
    #: optimizer steps with a non-finite loss or gradient skipped in a row before the run stops
    max_consecutive_skips: PositiveInt = 10


@dataclasses.dataclass
class ValidationSection:
    every: Annotated[int, Range(ge=0, note="0 = no validation samples")] = 0
    prompts: list[str] = dataclasses.field(default_factory=list)
    num_inference_steps: PositiveInt = 4
    guidance_scale: Annotated[float, Range(ge=0)] = 7.5
    num_frames: PositiveInt | None = None
    fps: Annotated[float, Range(gt=0)] = 8
    format: Literal["mp4", "gif"] = "mp4"
    seed: Count = 0


@dataclasses.dataclass
class LoggingSection:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "t2v-turbo"


@dataclasses.dataclass
class OptimizerArgs:
    """Ranges of the usual torch optimizer arguments; checked for the keys an ``optimizer`` node has."""

    lr: Annotated[float, Range(gt=0)]
    weight_decay: Annotated[float, Range(ge=0)]
    eps: Annotated[float, Range(gt=0)]
    momentum: Annotated[float, Range(ge=0)]
    betas: list[Annotated[float, Range(ge=0, lt=1)]]


@dataclasses.dataclass
class RunConfig:
    """A whole run config; ``teacher`` and ``data`` have no default."""

    #: ``_component_`` nodes, checked against their callables' signatures
    teacher: Any
    data: Any
    output_dir: str = "runs/t2v_turbo"
    seed: Count = 0
    model: Any = dataclasses.field(default_factory=lambda: dict(DEFAULT_MODEL))
    objective: Any = dataclasses.field(default_factory=lambda: dict(DEFAULT_OBJECTIVE))
    rewards: list[RewardSpec] = dataclasses.field(default_factory=list)
    reward_options: RewardOptions = dataclasses.field(default_factory=RewardOptions)
    dataloader: DataloaderSection = dataclasses.field(default_factory=DataloaderSection)
    optimizer: Any = dataclasses.field(default_factory=lambda: {
        COMPONENT_KEY: "torch.optim.AdamW", "lr": 1.0e-5, "betas": [0.9, 0.999], "weight_decay": 0.0})
    lr_scheduler: LrSchedulerSection = dataclasses.field(default_factory=LrSchedulerSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    validation: ValidationSection = dataclasses.field(default_factory=ValidationSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)


#: the decode options that moved from ``reward_options`` into the T2V-Turbo objective
LEGACY_REWARD_OPTIONS = ("video_only_fraction", "vae_gradient_checkpointing", "decode_chunk_size", "frame_window")


def upgrade_legacy_layout(cfg: dict) -> tuple[dict, bool]:
    """(config, whether it was changed): a config written before objectives became components
    (``student:`` and ``distill:`` sections, decode options in ``reward_options:``) read as the current
    layout: ``model: {_component_: distill.model.from_teacher, **student}``, ``objective:
    {_component_: distill.objectives.T2VTurboObjective, **distill, **decode options}``. A config that
    mixes both layouts is left as it is (validation then names the unknown keys)."""
    legacy = "student" in cfg or "distill" in cfg
    if not legacy or "model" in cfg or "objective" in cfg:
        return cfg, False
    cfg = dict(cfg)
    options = dict(cfg.pop("reward_options", None) or {})
    cfg["model"] = {**DEFAULT_MODEL, **(cfg.pop("student", None) or {})}
    decode = {key: options.pop(key) for key in LEGACY_REWARD_OPTIONS if key in options}
    cfg["objective"] = {**DEFAULT_OBJECTIVE, **(cfg.pop("distill", None) or {}), **decode}
    if options:
        cfg["reward_options"] = options
    return cfg, True
