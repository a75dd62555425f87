"""The training recipe: one class built entirely from a run config, for every objective.

``TrainingRecipe(cfg)`` follows the torchtune recipe shape: ``setup(resume)``, ``train()``,
``save_checkpoint(step)``, ``cleanup()``; ``t2v_turbo.commands.train`` is its thin entry point. What a
recipe optimises is the config's ``objective:`` component (``distill.objectives``: T2V-Turbo's CD +
mixed reward, VADER, InstructVideo, ...; the contract is ``distill/objectives/base.py``); everything
else is shared.

Features
- teacher from ``teacher`` (a ``_component_`` adapter builder), frozen, eval mode, in
  ``train.teacher_dtype``; the trained model from ``model`` (``distill.model.from_teacher``: a LoRA or
  fully trained student with the guidance layer, or a full-step model without it;
  ``distill.model.from_student``: a distilled student trained further); rewards from
  ``build_reward(name, **args)``, frozen, eval mode, in ``reward_options.dtype``, each with its loss form;
- data from ``data`` (videos with captions, or ``distill.data.PromptDataset``), checked against what the
  objective needs before the teacher loads; each batch is prepared once (VAE latents, text embeddings;
  skipped when the batch already carries them) and handed to the objective as a ``TrainingBatch``;
- accelerate: mixed precision (``no``/``bf16``/``fp16``), gradient accumulation, gradient
  clipping, DDP, FSDP2 or DeepSpeed ZeRO-2 under ``accelerate launch --config_file configs/accelerate/...``
  (every process computes the same objective on its own shard of global sample positions; the rank only
  shards data; under FSDP only the trained network is sharded, ``distill/sharding.py``), gradient
  checkpointing of the trained network;
- optimizer from ``optimizer`` (``torch.optim.AdamW``, or ``bitsandbytes.optim.AdamW8bit``
  when bitsandbytes is installed), LR schedule from diffusers' ``get_scheduler``;
- logs (TensorBoard, wandb optional): ``loss``, the objective's scalars (``loss/cd``, ...),
  ``reward/<name>`` (mean score), ``reward_term/<name>`` (its contribution to the loss), ``grad_norm/<name>``
  (norm of the gradient of that contribution with respect to the decoded pixels the reward scored),
  ``grad_norm/model`` (before clipping), ``lr``, ``data/skipped_videos``;
- validation samples (the model's own sampler) written as an mp4 or gif grid every ``validation.every``;
- checkpoints ``output_dir/checkpoint-<step>/`` written atomically (a ``.tmp`` folder renamed
  into place), the last ``train.keep_checkpoints`` kept; each holds the loadable model folder
  (``student/``, or ``model/`` for a full-step model), ``training_state.pt`` (trainable weights, optimizer,
  LR schedule, the objective's state such as EMA weights, step and data position), ``rng_state_<rank>.pt``
  and the resolved ``config.yaml``;
- ``setup(resume="latest" | path)`` continues bit-compatibly: the same weights, optimizer,
  RNG and data position, so an interrupted run reproduces the uninterrupted one;
- the final model is written to ``output_dir/student/`` (``output_dir/model/`` for a full-step model).

Errors: ``ConfigError`` naming every bad key at once (``validate_run_config``);
``FileNotFoundError`` for a missing teacher folder (from the adapter) or resume checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from distill.checkpoints import (
    CHECKPOINT_PREFIX,
    CONFIG_NAME,
    STATE_NAME,
    CheckpointError,
    LoadedCheckpoint,
    find_resume_checkpoint,
    list_checkpoints,
    rng_file_name,
    rng_state,
    set_rng_state,
    tensor_bytes,
    write_guard,
)
from distill.config_schema import OptimizerArgs, RunConfig, upgrade_legacy_layout
from distill.data import GlobalPositionSampler, PositionedDataset, collate_samples, count_reasons
from distill.nonfinite import NonFiniteError, SkippedSteps, nonfinite_reason, nonfinite_tensors
from distill.objectives.base import VAE_STREAM, Objective, RunContext, TrainingBatch, sample_generator
from distill.objectives.rewarding import RewardTerm
from distill.sharding import (
    any_process,
    blocks_to_wrap,
    copy_full_,
    fsdp_plugin_errors,
    gathered,
    is_sharded,
    shard_optimizer_state,
)
from t2v_turbo.config import (
    COMPONENT_KEY,
    ConfigError,
    instantiate,
    merge,
    resolve_component,
    save_config,
    signature_errors,
    validate_component,
    with_signature_defaults,
)
from t2v_turbo.fileio import FolderLock
from t2v_turbo.schema import schema_defaults, schema_errors

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: every key a run config may hold, with its default (``teacher`` and ``data`` have none); the schema is ``RunConfig``
DEFAULTS: dict[str, Any] = schema_defaults(RunConfig)
COMPONENT_SECTIONS = ("teacher", "data")
#: keyword arguments the trainer passes when it builds the ``model`` node
MODEL_BUILD_ARGS = ("adapter", "seed")
#: batch fields ``prepare_batch`` turns into ``TrainingBatch`` fields (the rest go to ``TrainingBatch.extras``)
CONSUMED_BATCH_FIELDS = ("captions", "indices", "positions", "skipped", "pixels", "latents", "posterior_mean",
                         "posterior_std", "text_embedding", "uncond_embedding")


def validate_run_config(cfg: dict, check_rewards: bool = True) -> list[str]:
    """Every problem of a run config (unknown or missing keys, values of the wrong type or out of
    range, component keys that the callables do not take), without building anything heavy.
    Empty when valid."""
    train = cfg.get("train")
    if isinstance(train, dict) and train.get("mixed_precision") is False:
        # YAML 1.1 reads a bare `no` (e.g. the override train.mixed_precision=no) as false.
        train["mixed_precision"] = "no"
    errors = schema_errors(cfg, RunConfig)
    for name in COMPONENT_SECTIONS:
        if name not in cfg:
            continue
        if not isinstance(cfg[name], dict) or COMPONENT_KEY not in cfg[name]:
            errors.append(f"{name}: must be a mapping with a {COMPONENT_KEY!r} key")
        else:
            errors += validate_component(cfg[name], name)
    errors += _model_errors(cfg.get("model"))
    model, train = cfg.get("model"), cfg.get("train")
    if (isinstance(model, dict) and isinstance(train, dict) and model_kind(model) == "teacher" and model.get("lora") is not None and train.get("mixed_precision") == "no"
            and train.get("teacher_dtype", "float32") != "float32"):
        errors.append(f"model: a LoRA full-step model shares the teacher's frozen weights, which "
                      f"train.teacher_dtype={train['teacher_dtype']} keeps in that dtype; float32 LoRA layers on them "
                      "need train.mixed_precision bf16 or fp16 (or train.teacher_dtype float32)")
    objective, found = build_objective(cfg.get("objective"))
    errors += found
    if objective is not None and not any(e.startswith(("model", "rewards")) for e in errors):
        kind = model_kind(cfg["model"])
        if kind is not None:
            errors += objective.check_run(kind, [spec.get("name") for spec in cfg.get("rewards") or []])
    errors += _optimizer_errors(cfg.get("optimizer", {}))
    if isinstance(cfg.get("rewards"), list) and not any(e.startswith("rewards") for e in errors):
        errors += _reward_errors(cfg["rewards"], check_rewards)
    from diffusers.optimization import SchedulerType

    names = [s.value for s in SchedulerType]
    scheduler = cfg.get("lr_scheduler", {})
    if isinstance(scheduler, dict) and scheduler.get("name") not in names:
        errors.append(f"lr_scheduler.name={scheduler.get('name')!r} is not one of {names}")
    return errors


def _optimizer_errors(node: Any) -> list[str]:
    if not isinstance(node, dict) or COMPONENT_KEY not in node:
        return [f"optimizer: must be a mapping with a {COMPONENT_KEY!r} key"]
    if str(node[COMPONENT_KEY]).startswith("bitsandbytes."):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return [f"optimizer: {node[COMPONENT_KEY]} needs bitsandbytes (pip install 't2v-turbo[gpu]'), "
                    "or use torch.optim.AdamW"]
    args = {k: v for k, v in node.items() if k != COMPONENT_KEY}
    return schema_errors(args, OptimizerArgs, "optimizer", partial=True) + validate_component(
        node, "optimizer", extra_kwargs=("params",))


def _model_errors(node: Any) -> list[str]:
    """The ``model`` node: a component whose keys its builder takes, ``lora`` against ``LoraSettings``."""
    from t2v_turbo.student import LoraSettings

    if not isinstance(node, dict) or COMPONENT_KEY not in node:
        return [f"model: must be a mapping with a {COMPONENT_KEY!r} key (e.g. distill.model.from_teacher)"]
    errors = validate_component(node, "model", extra_kwargs=MODEL_BUILD_ARGS)
    if node.get("lora") is not None:
        errors += schema_errors(node["lora"], LoraSettings, "model.lora")
    return errors


def build_objective(node: Any) -> tuple[Objective | None, list[str]]:
    """(the objective built from its node, problems): its keys against its signature, its values against
    its annotations. Building one is cheap (hyperparameters only)."""
    if not isinstance(node, dict) or COMPONENT_KEY not in node:
        return None, [f"objective: must be a mapping with a {COMPONENT_KEY!r} key (e.g. distill.objectives.VADERObjective)"]
    errors = validate_component(node, "objective")
    if errors:
        return None, errors
    if not (isinstance(resolve_component(node[COMPONENT_KEY]), type)
            and issubclass(resolve_component(node[COMPONENT_KEY]), Objective)):
        return None, [f"objective: {node[COMPONENT_KEY]} is not an Objective (distill.objectives.base.Objective)"]
    try:
        return instantiate(node), []
    except (TypeError, ValueError) as err:
        return None, [str(err)]


def model_kind(node: dict) -> str | None:
    """"student" or "teacher" (a full-step model): what the ``model`` node builds, read without loading
    weights (a student folder's ``student.json``); None when that cannot be told (another builder)."""
    from t2v_turbo.student import read_student_meta

    component = node.get(COMPONENT_KEY)
    if component == "distill.model.from_teacher":
        return "teacher" if node.get("time_cond_proj_dim", 256) is None else "student"
    if component == "distill.model.from_student" and node.get("path") is not None:
        try:
            return "student" if read_student_meta(node["path"]).is_student else "teacher"
        except (FileNotFoundError, ValueError):
            return None  # named when the model is built
    return None


def _reward_errors(rewards: list[dict], check_names: bool) -> list[str]:
    """Reward names against the registry and their ``args`` against the builders' signatures."""
    if not check_names or not rewards:
        return []
    from rewards.base import _REGISTRY, list_rewards

    list_rewards()
    errors = []
    for i, spec in enumerate(rewards):
        where = f"rewards[{i}]"
        if spec["name"] not in _REGISTRY:
            errors.append(f"{where}.name: unknown reward {spec['name']!r}; registered: {sorted(_REGISTRY)}")
        else:
            errors += signature_errors(_REGISTRY[spec["name"]], spec.get("args") or {}, f"{where}.args",
                                       f"reward {spec['name']!r}")
    return errors


def resolve_run_config(cfg: dict, check_rewards: bool = True) -> dict:
    """Defaults merged under ``cfg`` (a config of the legacy layout read as the current one), the
    ``model`` and ``objective`` nodes completed with their callables' defaults, validated; raises
    ``ConfigError`` listing every problem."""
    cfg, upgraded = upgrade_legacy_layout(cfg)
    if upgraded:
        logger.warning("the config uses the layout before objectives were components (student:, distill:); "
                       "read as model: and objective: (docs/training.md shows the current layout)")
    resolved = merge(DEFAULTS, cfg)
    for name, exclude in (("model", MODEL_BUILD_ARGS), ("objective", ())):
        if isinstance(resolved.get(name), dict) and COMPONENT_KEY in resolved[name]:
            resolved[name] = with_signature_defaults(resolved[name], exclude)
    errors = validate_run_config(resolved, check_rewards)
    if errors:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(errors))
    return resolved


class TrainingRecipe:
    """Training with the objective of a run config (T2V-Turbo, VADER, InstructVideo, ...)."""

    def __init__(self, cfg: dict, check_rewards: bool = True):
        self.cfg = resolve_run_config(cfg, check_rewards)
        self.objective: Objective = instantiate(self.cfg["objective"])
        self.output_dir = Path(self.cfg["output_dir"])
        self.global_step = 0
        self.micro_step = 0
        self.skipped_videos = 0
        self.skipped_steps = SkippedSteps(self.cfg["train"]["max_consecutive_skips"])
        self._window_losses: list[torch.Tensor] = []

    # ---- setup --------------------------------------------------------------------------
    def setup(self, resume: str | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        cfg, train = self.cfg, self.cfg["train"]
        log_with = (["tensorboard"] if cfg["logging"]["tensorboard"] else []) + (["wandb"] if cfg["logging"]["wandb"] else [])
        if "wandb" in log_with:
            try:
                import wandb  # noqa: F401
            except ImportError as err:
                raise ConfigError("logging.wandb=true needs wandb (pip install 't2v-turbo[wandb]')") from err
        self.accelerator = Accelerator(
            mixed_precision=train["mixed_precision"],
            gradient_accumulation_steps=train["gradient_accumulation_steps"],
            log_with=log_with or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            cpu=train["device"] == "cpu",
        )
        self._check_engine()
        if self.accelerator.is_main_process:  # one run per output_dir, taken before anything loads
            self.output_lock = FolderLock(self.output_dir, "training run").acquire()
        # read before anything heavy loads, so that an unreadable checkpoint is named at once
        checkpoint = self._find_resume_checkpoint(resume) if resume is not None else None
        set_seed(cfg["seed"])
        device = self.accelerator.device

        # data first: what it gives must be what the objective takes, found before the teacher loads
        self.dataset = instantiate(cfg["data"])
        self._check_data()

        # teacher (frozen) and the trained model
        self.adapter = instantiate(cfg["teacher"])
        self.adapter.freeze()
        self._release_cached_encoders()
        self.trained = instantiate(cfg["model"], adapter=self.adapter, seed=cfg["seed"])
        self.network = self.trained.unet
        if self.adapter.device != device:
            self.network.to(device)
        for param in self.network.parameters():
            if param.requires_grad:  # trained weights stay in float32 under any teacher dtype
                param.data = param.data.float()
        self.network.train()
        if train["gradient_checkpointing"]:
            enable_gradient_checkpointing(self.network)
        teacher_dtype = DTYPES[train["teacher_dtype"]]
        if self.adapter.device != device or next(self.adapter.unet.parameters()).dtype != teacher_dtype:
            self.adapter.to(device=device, dtype=teacher_dtype)
        self.trainable_names = [n for n, p in self.network.named_parameters() if p.requires_grad]

        # rewards: frozen, eval mode, in the configured dtype, whole on every process (never sharded)
        rewards = build_reward_terms(cfg["rewards"], cfg["reward_options"]["dtype"], device)

        # optimizer and LR schedule (stepped once per optimizer step, on every process alike)
        from diffusers.optimization import get_scheduler

        params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg["optimizer"], params=params)
        self.lr_scheduler = get_scheduler(
            cfg["lr_scheduler"]["name"],
            self.optimizer,
            num_warmup_steps=cfg["lr_scheduler"]["warmup_steps"],
            num_training_steps=train["max_steps"],
        )
        self._configure_engine()
        self.model, self.optimizer = self.accelerator.prepare(self.network, self.optimizer)

        # the objective bound to the run once the network is prepared: state it keeps of the trained weights (EMA
        # weights, a reference snapshot) then takes their form under the engine (sharded like them under FSDP)
        try:
            self.objective.bind(RunContext(self.adapter, self.trained, rewards, cfg["seed"], device))
        except ValueError as err:
            raise ConfigError(str(err)) from err

        # data: the dataset (built above) addressed by global sample positions
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self._build_dataloader()

        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.output_dir / CONFIG_NAME)
            self._clean_partial_checkpoints()
        if log_with:
            self.accelerator.init_trackers("t2v_turbo", config=_flat_hparams(self.cfg))
        logger.info("trainable parameters: %d tensors, %d values", len(params), sum(p.numel() for p in params))

    def _check_data(self) -> None:
        """The dataset gives clips when the objective needs them (``Objective.batch_inputs``), preference pairs
        when it trains on pairs (``Objective.needs_pairs``), and a dataset that records what it was made for (a
        latent cache's ``check_run``) agrees with this run."""
        if self.objective.batch_inputs == "videos" and not getattr(self.dataset, "has_videos", True):
            raise ConfigError(f"data: {self.cfg['data'][COMPONENT_KEY]} gives prompts only, but "
                              f"{type(self.objective).__name__} trains on video clips; use a video dataset "
                              "(distill.data.VideoCaptionCSV / VideoCaptionFolder / VideoCaptionShards)")
        if self.objective.needs_pairs and not getattr(self.dataset, "has_pairs", False):
            raise ConfigError(f"data: {self.cfg['data'][COMPONENT_KEY]} gives no preference pairs, but "
                              f"{type(self.objective).__name__} trains on them; use "
                              "distill.preference_data.PreferencePairs")
        errors = self.dataset.check_run(self.cfg) if hasattr(self.dataset, "check_run") else []
        if errors:
            raise ConfigError("the data does not fit this run:\n  " + "\n  ".join(errors))

    def _release_cached_encoders(self) -> None:
        """With cached encodings (``distill.latent_cache.CachedLatents``) the text encoder and the VAE encoder are
        let go before the teacher moves to the device; the VAE decoder stays when rewards or validation decode
        pixels. The cache's latent shape must be what this teacher's VAE gives for its geometry."""
        cache = self.dataset
        if not hasattr(cache, "prompt_embeddings"):
            return
        expected = tuple(self.adapter.latent_shape(1, cache.num_frames, cache.height, cache.width)[1:])
        if expected != cache.latent_shape:
            raise ConfigError(f"data: the latent cache {cache.folder} holds latents of shape {cache.latent_shape}; "
                              f"this teacher's VAE gives {expected} for {cache.num_frames} x {cache.height} x "
                              f"{cache.width} clips")
        decodes = bool(self.cfg["rewards"]) or bool(self.cfg["validation"]["every"])
        self.adapter.release_encoders(keep_decoder=decodes, uncond_embedding=cache.uncond_embedding,
                                      prompt_embeddings=cache.prompt_embeddings)
        logger.info("training from the latent cache %s: text encoder and VAE encoder released%s", cache.folder,
                    "" if decodes else ", and the VAE decoder (no reward or validation decodes pixels)")

    def _check_engine(self) -> None:
        """What the accelerate engine (the launch config, ``configs/accelerate/``) allows, checked before anything
        loads: under FSDP the plugin's settings (``fsdp_plugin_errors``) and an objective that calls the network alike
        on every process."""
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        self.sharded = kind == DistributedType.FSDP
        self.deepspeed = kind == DistributedType.DEEPSPEED
        if self.sharded:
            errors = fsdp_plugin_errors(self.accelerator.state.fsdp_plugin) + self.objective.sharding_errors()
            if errors:
                raise ConfigError("the FSDP launch config does not fit this run:\n  " + "\n  ".join(errors))
        logger.info("engine: %s on %d process(es)", kind.value, self.accelerator.num_processes)

    def _configure_engine(self) -> None:
        """Before ``prepare``. FSDP: the launch config's auto-wrap classes narrowed to the blocks of this network (one
        config names the blocks of every model family; accelerate refuses a class the model lacks). DeepSpeed: the
        micro-batch, accumulation and clipping taken from the run config, the record of the run."""
        if self.sharded and self.accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap:
            plugin = self.accelerator.state.fsdp_plugin
            try:
                plugin.transformer_cls_names_to_wrap = blocks_to_wrap(plugin.transformer_cls_names_to_wrap, self.network)
            except ValueError as err:
                raise ConfigError(str(err)) from err
            logger.info("FSDP: each %s is its own shard unit", ", ".join(plugin.transformer_cls_names_to_wrap))
        if self.deepspeed:
            config, train = self.accelerator.state.deepspeed_plugin.deepspeed_config, self.cfg["train"]
            config["train_micro_batch_size_per_gpu"] = self.cfg["dataloader"]["batch_size"]
            config["gradient_accumulation_steps"] = train["gradient_accumulation_steps"]
            config["gradient_clipping"] = train["max_grad_norm"]

    @property
    def model_folder_name(self) -> str:
        """The folder a saved model goes to: ``student`` (a consistency student) or ``model`` (a full-step model)."""
        return "student" if self.trained.meta.is_student else "model"

    def _build_dataloader(self) -> None:
        loader = self.cfg["dataloader"]
        sampler = GlobalPositionSampler(
            len(self.dataset),
            loader["batch_size"],
            seed=self.cfg["seed"],
            shuffle=loader["shuffle"],
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            start_batch=self.micro_step,
        )
        self.dataloader = torch.utils.data.DataLoader(
            PositionedDataset(self.dataset),
            batch_sampler=sampler,
            num_workers=loader["num_workers"],
            collate_fn=collate_samples,
            # its own generator: creating the iterator must not draw from the global RNG (resume)
            generator=torch.Generator().manual_seed(self.cfg["seed"]),
        )

    # ---- one step -----------------------------------------------------------------------
    def prepare_batch(self, batch: dict) -> TrainingBatch:
        """A collated batch as the objective takes it, without gradient: VAE latents of the clips (unless the
        objective uses prompts only, or the batch already carries ``latents``), the text embeddings of the
        captions and of the empty prompt (unless it carries ``text_embedding`` / ``uncond_embedding``), and the
        dataset's other fields as ``extras``.

        Latents are drawn from the VAE posterior, of the clips or cached (``posterior_mean``, ``posterior_std``),
        with sample b's noise from ``sample_generator(seed, position_b, VAE_STREAM)``: the same draw for the same
        sample in either path, whatever batch or process it is in."""
        from t2v_turbo.adapters.base import sample_posterior

        device, positions = self.accelerator.device, batch["positions"]
        with torch.no_grad():
            latents = None
            if self.objective.batch_inputs != "prompts":
                generators = [sample_generator(self.cfg["seed"], p, VAE_STREAM) for p in positions]
                if "latents" in batch:
                    latents = batch["latents"].to(device).float()
                elif "posterior_mean" in batch:
                    latents = sample_posterior(batch["posterior_mean"].to(device), batch["posterior_std"].to(device),
                                               generators)
                elif "pixels" in batch:
                    latents = self.adapter.encode_video(batch["pixels"].to(device), generator=generators)
            if "text_embedding" in batch:
                text = batch["text_embedding"].to(device)
            else:
                text = self.adapter.encode_prompts(batch["captions"])
            if "uncond_embedding" in batch:
                uncond = batch["uncond_embedding"].to(device)
            else:
                uncond = self.adapter.empty_prompt_embedding(len(positions))
        extras = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()
                  if key not in CONSUMED_BATCH_FIELDS}
        return TrainingBatch(list(batch["captions"]), list(positions), text.float(), uncond.float(), latents, extras)

    def compute_loss(self, batch: dict, grad_norms: bool = False):
        """Prepare the batch (no grad) and evaluate the objective on it."""
        prepared = self.prepare_batch(batch)
        with self.accelerator.autocast():
            return self.objective(self.model, prepared, grad_norms=grad_norms)

    def train_step(self, batch: dict, grad_norms: bool = False):
        """One micro-batch: loss and backward; at the end of an accumulation window the finite
        check, clipping and the optimizer step. Returns (objective output, gradient norm before
        clipping or None, why the optimizer step was skipped or None)."""
        accelerator, max_norm = self.accelerator, self.cfg["train"]["max_grad_norm"]
        grad_norm, skip = None, None
        with accelerator.accumulate(self.model):
            out = self.compute_loss(batch, grad_norms=grad_norms)
            if self.deepspeed:
                self._refuse_nonfinite_loss(out.loss)
            accelerator.backward(out.loss)
            self._window_losses.append(out.loss.detach())
            if accelerator.sync_gradients:
                skip = self._skip_reason()
                if skip is None:
                    if max_norm:
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
                        if is_sharded(grad_norm):  # FSDP: the norm over every process's rows, replicated
                            grad_norm = grad_norm.full_tensor()
                    self.optimizer.step()
                    if self.optimizer.step_was_skipped:
                        skip = "fp16 gradient overflow (the GradScaler skipped the update and lowered its scale)"
                self.optimizer.zero_grad(set_to_none=True)
                self._window_losses = []
        self.micro_step += 1
        return out, grad_norm, skip

    def _refuse_nonfinite_loss(self, loss: torch.Tensor) -> None:
        """DeepSpeed applies the optimizer step inside ``accelerator.backward`` (its engine's ``step``), so a step
        with a non-finite loss cannot be skipped afterwards: the run stops before that backward instead."""
        if any_process(not bool(torch.isfinite(loss.detach()).all()), self.accelerator):
            kept = list_checkpoints(self.output_dir)
            raise NonFiniteError(f"step {self.global_step + 1}: non-finite loss under DeepSpeed, whose engine would apply "
                                 f"the step; stopping. The last checkpoint is {kept[-1] if kept else 'none'}")

    def _skip_reason(self) -> str | None:
        """Why this window's optimizer step must be skipped (non-finite loss or gradient), agreed by all
        processes. Under fp16 the GradScaler checks the gradients itself (an overflow lowers its scale)."""
        named = None if self.accelerator.scaler is not None else self.network.named_parameters()
        reason = nonfinite_reason(self._window_losses, named)
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(float(reason is not None), device=self.accelerator.device)
            if float(self.accelerator.reduce(flag, "sum")) > 0 and reason is None:
                reason = "a non-finite loss on another process"
        return reason

    def train(self) -> None:
        """Train to ``train.max_steps`` (logs, checkpoints, validation), then write the final student. What
        was skipped is logged at the end, also when the run stops on an error."""
        from tqdm.auto import tqdm

        progress = tqdm(total=self.cfg["train"]["max_steps"], initial=self.global_step, desc="train",
                        disable=not self.accelerator.is_main_process)
        try:
            self._train_loop(progress)
        finally:
            progress.close()
            self.report_skips()
        self.save_final()

    def _train_loop(self, progress) -> None:
        cfg, train, accelerator = self.cfg, self.cfg["train"], self.accelerator
        data = iter(self.dataloader)
        accumulated: dict[str, float] = {}
        window_start, window_step = time.perf_counter(), self.global_step  # per-step speed over each log window
        while self.global_step < train["max_steps"]:
            batch = next(data)
            self.skipped_videos += len(batch["skipped"])
            log_now = (self.global_step + 1) % train["log_every"] == 0
            out, grad_norm, skip = self.train_step(batch, grad_norms=log_now)
            _accumulate(accumulated, out, train["gradient_accumulation_steps"])
            if not accelerator.sync_gradients:
                continue
            self.global_step += 1
            self.skipped_steps.record(self.global_step, skip)
            if skip is None:
                self.lr_scheduler.step()
                self.objective.after_optimizer_step()
            progress.update(1)
            if log_now:
                logs = dict(accumulated, lr=self.lr_scheduler.get_last_lr()[0])
                logs["train/skipped_steps"] = self.skipped_steps.total
                if grad_norm is not None:
                    logs["grad_norm/model"] = float(grad_norm)
                skipped = torch.tensor(float(self.skipped_videos), device=accelerator.device)
                logs["data/skipped_videos"] = float(accelerator.reduce(skipped, "sum"))
                seconds_per_step = (time.perf_counter() - window_start) / max(self.global_step - window_step, 1)
                window_start, window_step = time.perf_counter(), self.global_step
                logs["train/seconds_per_step"] = seconds_per_step
                accelerator.log(logs, step=self.global_step)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                if accelerator.is_main_process:  # a line per log window, so a slow machine shows in any log
                    left_min = seconds_per_step * (train["max_steps"] - self.global_step) / 60
                    logger.info("step %d/%d: loss %.4f, %.2f s/step, about %.1f min left",
                                self.global_step, train["max_steps"], logs["loss"], seconds_per_step, left_min)
            accumulated = {}
            if train["checkpoint_every"] and self.global_step % train["checkpoint_every"] == 0:
                self.save_checkpoint(self.global_step)
            if cfg["validation"]["every"] and self.global_step % cfg["validation"]["every"] == 0:
                self.validate(self.global_step)

    def report_skips(self) -> str:
        """What this process left out of the run, in one line, logged at its end (a warning when anything was)."""
        invalid = getattr(self.dataset, "invalid_items", [])
        parts = [f"{self.skipped_videos} video(s) that could not be decoded (replaced while training)",
                 f"{len(invalid)} data item(s) left out when the data was read"
                 + (f" ({count_reasons(invalid)})" if invalid else ""),
                 f"{self.skipped_steps.total} optimizer step(s) with a non-finite loss or gradient"]
        rank = f" (process {self.accelerator.process_index})" if self.accelerator.num_processes > 1 else ""
        line = f"skipped in this run{rank}: " + "; ".join(parts)
        anything = self.skipped_videos or invalid or self.skipped_steps.total
        logger.log(logging.WARNING if anything else logging.INFO, line)
        return line

    # ---- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> Path | None:
        """Sample the validation prompts with the model's own sampler (a student's consistency steps, a
        full-step model's DDIM + CFG); write one grid video (main process)."""
        val = self.cfg["validation"]
        # under FSDP each forward of the network is a collective: every process samples, the main one writes
        if not val["prompts"] or not (self.accelerator.is_main_process or self.sharded):
            return None
        from t2v_turbo.pipeline import model_pipeline
        from t2v_turbo.video_io import save_grid

        self.network.eval()
        pipeline = model_pipeline(self.adapter, self.network, self.model_meta(), inference_mode=False)
        generator = torch.Generator().manual_seed(val["seed"])
        videos = pipeline(val["prompts"], num_inference_steps=val["num_inference_steps"],
                          guidance_scale=val["guidance_scale"], num_frames=val["num_frames"], generator=generator)
        self.network.train()
        if not self.accelerator.is_main_process:
            return None
        path = self.output_dir / "validation" / f"step-{step:06d}.{val['format']}"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(path, list(videos.cpu()), fps=val["fps"])
        return path

    # ---- checkpoints --------------------------------------------------------------------
    def model_meta(self):
        """What the saved model folder records: the model's own record (LoRA, guidance layer; a student
        folder's distillation grid), the training clips' geometry, what the objective adds (a consistency
        objective's grid and guidance range) and the validation sampling settings as sampling defaults."""
        geometry = {key: getattr(self.dataset, key) for key in ("num_frames", "height", "width", "fps")
                    if getattr(self.dataset, key, None) is not None}
        sampling = {"guidance_scale": self.cfg["validation"]["guidance_scale"],
                    "num_inference_steps": self.cfg["validation"]["num_inference_steps"]}
        return dataclasses.replace(self.trained.meta, **{**geometry, **self.objective.model_meta(), **sampling})

    def training_state(self) -> dict | None:
        """What ``training_state.pt`` holds: plain data only (tensors, numbers, strings, lists, dicts), the same
        whole tensors under every engine. Every process calls it (under FSDP the shards are gathered, a collective);
        the main process gets the state, the others None. Under DeepSpeed the optimizer's moments are partitioned
        in DeepSpeed's own format and are not written (``optimizer`` is None; such a checkpoint does not resume)."""
        keep = self.accelerator.is_main_process
        if not (keep or self.sharded):
            return None
        params = dict(self.network.named_parameters())
        scaler = self.accelerator.scaler
        trainable = {n: params[n].detach() if self.sharded else params[n].detach().cpu().clone()
                     for n in self.trainable_names}
        return gathered({
            "trainable": trainable,
            "optimizer": None if self.deepspeed else self.optimizer.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "global_step": self.global_step,
            "micro_step": self.micro_step,
            "skipped_videos": self.skipped_videos,
            "skipped_steps": self.skipped_steps.state_dict(),
            "num_processes": self.accelerator.num_processes,
        }, keep)

    def student_weights(self) -> dict[str, torch.Tensor] | None:
        """What the saved model folder holds (``student_state_dict``), whole; every process calls it (gathered under
        FSDP), the main process gets the tensors, the others None."""
        from t2v_turbo.student import student_state_dict

        if not (self.accelerator.is_main_process or self.sharded):
            return None
        return gathered(student_state_dict(self.network), self.accelerator.is_main_process)

    def save_checkpoint(self, step: int) -> Path:
        """Write ``checkpoint-<step>/`` atomically: all files go to ``checkpoint-<step>.tmp`` first; a failed
        write (a full disk) removes it, keeps the previous checkpoints and raises ``CheckpointWriteError``."""
        from t2v_turbo.student import save_student

        accelerator = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        self._require_finite_weights(final.name)
        tmp = self.output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"
        state, weights = self.training_state(), self.student_weights()
        needed = tensor_bytes(state) + tensor_bytes(weights)
        with write_guard(tmp, final, needed):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                save_student(tmp / self.model_folder_name, self.network, self.model_meta(), weights=weights)
                torch.save(state, tmp / STATE_NAME)
                save_config(self.cfg, tmp / CONFIG_NAME)
            accelerator.wait_for_everyone()
            torch.save(rng_state(), tmp / rng_file_name(accelerator.process_index))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                counters = {"global_step": step, "micro_step": self.micro_step,
                            "num_processes": accelerator.num_processes}
                (tmp / "trainer_state.json").write_text(json.dumps(counters) + "\n")
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.output_dir)[: -self.cfg["train"]["keep_checkpoints"]]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def _require_finite_weights(self, what: str) -> None:
        """Refuse to write ``what`` when a trained weight (or one the objective tracks, e.g. EMA) holds NaN or Inf."""
        params = dict(self.network.named_parameters())
        named = [(name, params[name]) for name in self.trainable_names] + self.objective.weights()
        bad = nonfinite_tensors(named)
        if self.sharded and any_process(bool(bad), self.accelerator) and not bad:
            bad = ["a shard held by another process"]  # every process refuses alike
        if bad:
            kept = list_checkpoints(self.output_dir)
            last = kept[-1] if kept else "none (no checkpoint yet)"
            raise NonFiniteError(
                f"step {self.global_step}: {len(bad)} trained weight tensor(s) hold NaN or Inf (first {bad[0]}); "
                f"{what} is not written. The last finite checkpoint is {last}"
            )

    def _find_resume_checkpoint(self, resume: str) -> LoadedCheckpoint:
        """``--resume latest|PATH`` read (plain data only); all processes must agree on the step."""
        checkpoint = find_resume_checkpoint(resume, self.output_dir, self.accelerator.process_index)
        if self.accelerator.num_processes > 1:
            step = torch.tensor(float(checkpoint.state["global_step"]), device=self.accelerator.device)
            # accelerate's reduce knows "sum", "mean" and "max" (any other name sums): the minimum is -max(-step)
            low, high = -self.accelerator.reduce(-step, "max"), self.accelerator.reduce(step, "max")
            if low != high:
                raise CheckpointError(f"--resume {resume}: the processes found different readable checkpoints "
                                      f"(steps {int(low)} to {int(high)}); check the rng_state_<rank>.pt files")
        return checkpoint

    def load_checkpoint(self, checkpoint: LoadedCheckpoint) -> None:
        """Restore weights, optimizer, grad scaler, LR schedule, objective state (e.g. EMA), counters and RNG from a read checkpoint."""
        folder, state = checkpoint.folder, checkpoint.state
        if state["num_processes"] != self.accelerator.num_processes:
            raise RuntimeError(
                f"{folder}: written by {state['num_processes']} processes, resuming with "
                f"{self.accelerator.num_processes}; the data position would differ"
            )
        if state["optimizer"] is None or self.deepspeed:
            why = ("it was written under DeepSpeed, whose partitioned optimizer moments it does not hold"
                   if state["optimizer"] is None else "DeepSpeed keeps the optimizer moments in its own partitioned format")
            raise CheckpointError(f"{folder / STATE_NAME}: cannot resume: {why}. Resume under DDP or FSDP "
                                  "(configs/accelerate/); the checkpoint's student folder loads as any student")
        params = dict(self.network.named_parameters())
        if set(state["trainable"]) != set(self.trainable_names):
            raise RuntimeError(f"{folder / STATE_NAME}: trainable parameters differ from the configured model")
        for name, value in state["trainable"].items():
            copy_full_(params[name], value)  # this process's rows under FSDP
        optimizer_state = shard_optimizer_state(state["optimizer"], self.optimizer) if self.sharded else state["optimizer"]
        self.optimizer.load_state_dict(optimizer_state)
        if self.accelerator.scaler is not None and state["grad_scaler"] is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        try:
            self.objective.load_state_dict(state["objective"])
        except RuntimeError as err:
            raise RuntimeError(f"{folder / STATE_NAME}: {err}") from err
        self.global_step, self.micro_step = state["global_step"], state["micro_step"]
        self.skipped_videos = state["skipped_videos"]
        self.skipped_steps.load_state_dict(state["skipped_steps"])
        set_rng_state(checkpoint.rng)
        logger.info("resumed from %s at step %d", folder, self.global_step)

    def _clean_partial_checkpoints(self) -> None:
        for tmp in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
            logger.warning("removing the incomplete checkpoint %s (a run stopped while writing it)", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def save_final(self) -> Path:
        from t2v_turbo.student import save_student

        folder = self.output_dir / self.model_folder_name
        self._require_finite_weights(f"the final model {folder}")
        weights = self.student_weights()
        if self.accelerator.is_main_process:
            with write_guard(None, folder, tensor_bytes(weights)):
                save_student(folder, self.network, self.model_meta(), weights=weights)
                save_config(self.cfg, folder / CONFIG_NAME)
        self.accelerator.wait_for_everyone()
        return folder

    def cleanup(self) -> None:
        from accelerate.state import AcceleratorState, GradientState

        if hasattr(self, "accelerator"):
            self.accelerator.end_training()
        if hasattr(self, "output_lock"):
            self.output_lock.release()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run_training(cfg: dict, resume: str | None = None) -> TrainingRecipe:
    """A recipe built from ``cfg``, set up (resumed from ``resume``), trained and cleaned up; returns it (the trained
    weights in ``.network``)."""
    recipe = TrainingRecipe(cfg)
    try:
        recipe.setup(resume=resume)
        recipe.train()
    finally:
        recipe.cleanup()  # also after a failed setup: the output folder's lock is released
    return recipe


def enable_gradient_checkpointing(unet: torch.nn.Module) -> None:
    """Recompute activations in backward instead of storing them.

    Uses the model's own switch when it has one that works (our VideoCrafter2 UNet; diffusers
    models with ``_supports_gradient_checkpointing``). diffusers' ``UNet3DConditionModel`` has
    none, so each of its down, mid and up blocks is wrapped in a non-reentrant
    ``torch.utils.checkpoint`` (RNG state preserved: LoRA dropout repeats exactly in recompute).
    """
    from torch.utils.checkpoint import checkpoint

    if hasattr(unet, "enable_gradient_checkpointing") and getattr(unet, "_supports_gradient_checkpointing", True):
        unet.enable_gradient_checkpointing()
        return
    blocks = [*getattr(unet, "down_blocks", []), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", [])]
    blocks = [b for b in blocks if b is not None]
    if not blocks:
        raise ValueError(f"train.gradient_checkpointing: {type(unet).__name__} has no checkpointing switch and no "
                         "down_blocks/mid_block/up_blocks to wrap")
    for block in blocks:
        def forward(*args, _forward=block.forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = forward
    unet.checkpointed_blocks = len(blocks)


def _with_reward_dtype(spec: dict, dtype: str) -> tuple[dict, bool]:
    """(args, casts_itself): when the reward's builder takes ``dtype``, ``reward_options.dtype``
    is passed as its default (an explicit ``args.dtype`` wins) and the reward casts its own
    inputs; otherwise the trainer casts the built module."""
    import inspect

    from rewards.base import _REGISTRY

    args = dict(spec.get("args") or {})
    casts_itself = "dtype" in inspect.signature(_REGISTRY[spec["name"]]).parameters
    if casts_itself:
        args.setdefault("dtype", dtype)
    return args, casts_itself


def build_reward_terms(specs: list[dict], dtype: str, device: torch.device) -> list[RewardTerm]:
    """The ``rewards`` entries built (``build_reward``), frozen, in eval mode, on ``device`` and in ``dtype``,
    each with its weight and loss form; a name used twice gets ``#2``, ``#3`` ... in its label."""
    from rewards.base import build_reward

    terms, seen = [], {}
    for spec in specs:
        args, casts_itself = _with_reward_dtype(spec, dtype)
        reward = build_reward(spec["name"], **args)
        reward.requires_grad_(False).eval().to(device)
        if not casts_itself:
            reward.to(DTYPES[dtype])
        seen[spec["name"]] = seen.get(spec["name"], 0) + 1
        label = spec["name"] if seen[spec["name"]] == 1 else f"{spec['name']}#{seen[spec['name']]}"
        terms.append(RewardTerm(label, reward, float(spec.get("weight", 1.0)), spec.get("loss", "linear"),
                                float(spec.get("target", 0.0))))
    return terms


def _accumulate(logs: dict, out, steps: int) -> None:
    """Mean over the micro-batches of an optimizer step of the loss, the objective's scalars, each reward
    and each reward's term."""
    values = {"loss": out.loss, **out.scalars, **{f"reward/{k}": v for k, v in out.rewards.items()},
              **{f"reward_term/{k}": v for k, v in out.terms.items() if k in out.rewards}}
    for key, value in values.items():
        logs[key] = logs.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) / steps
    for key, value in out.reward_grad_norms.items():
        logs[f"grad_norm/{key}"] = value


def _flat_hparams(cfg: dict, prefix: str = "") -> dict:
    """Scalars of the config with dotted keys (what TensorBoard's hparams accept)."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_hparams(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
