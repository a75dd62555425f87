"""The T2V-Turbo distillation recipe: one class built entirely from a run config.

``DistillationRecipe(cfg)`` follows the torchtune recipe shape: ``setup(resume)``, ``train()``,
``save_checkpoint(step)``, ``cleanup()``; ``t2v_turbo.commands.train`` is its thin entry point.

Features
- teacher from ``teacher`` (a ``_component_`` adapter builder), frozen, eval mode, in
  ``train.teacher_dtype``; student from ``build_student`` (LoRA or full fine-tuning, guidance
  layer trained or frozen at zero); rewards from ``build_reward(name, **args)``, frozen, eval
  mode, in ``reward_options.dtype``;
- the objective of ``distill.objective`` (CD with an online or EMA target, plus the weighted
  rewards on the student's single-step prediction);
- accelerate: mixed precision (``no``/``bf16``/``fp16``), gradient accumulation, gradient
  clipping, DDP under ``accelerate launch`` (every process computes the same objective on its
  own shard of global sample positions; the rank only shards data), gradient checkpointing
  of the student UNet;
- optimizer from ``optimizer`` (``torch.optim.AdamW``, or ``bitsandbytes.optim.AdamW8bit``
  when bitsandbytes is installed), LR schedule from diffusers' ``get_scheduler``;
- logs (TensorBoard, wandb optional): ``loss``, ``loss/cd``, ``reward/<name>`` (mean score),
  ``reward_term/<name>`` (its weighted contribution to the loss), ``grad_norm/<name>`` (norm of
  the gradient of that contribution with respect to the decoded pixels the reward scored),
  ``grad_norm/student`` (before clipping), ``lr``, ``data/skipped_videos``;
- validation samples (4-step student) written as an mp4 or gif grid every ``validation.every``;
- checkpoints ``output_dir/checkpoint-<step>/`` written atomically (a ``.tmp`` folder renamed
  into place), the last ``train.keep_checkpoints`` kept; each holds ``student/`` (a loadable
  student), ``training_state.pt`` (trainable weights, optimizer, LR schedule, EMA, step and
  data position), ``rng_state_<rank>.pt`` and the resolved ``config.yaml``;
- ``setup(resume="latest" | path)`` continues bit-compatibly: the same weights, optimizer,
  RNG and data position, so an interrupted run reproduces the uninterrupted one;
- the final student is written to ``output_dir/student/``.

Errors: ``ConfigError`` naming every bad key at once (``validate_run_config``);
``FileNotFoundError`` for a missing teacher folder (from the adapter) or resume checkpoint.
"""

from __future__ import annotations

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
from distill.config_schema import OptimizerArgs, RunConfig
from distill.data import GlobalPositionSampler, PositionedDataset, collate_samples, count_reasons
from distill.ema import EMATarget
from distill.nonfinite import NonFiniteError, SkippedSteps, nonfinite_reason, nonfinite_tensors
from distill.objective import VAE_STREAM, ConsistencySettings, RewardTerm, T2VTurboObjective, sample_generator
from t2v_turbo.config import (
    COMPONENT_KEY,
    ConfigError,
    instantiate,
    merge,
    save_config,
    signature_errors,
    validate_component,
)
from t2v_turbo.fileio import FolderLock
from t2v_turbo.schema import schema_defaults, schema_errors

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: every key a run config may hold, with its default (``teacher`` and ``data`` have none); the schema is ``RunConfig``
DEFAULTS: dict[str, Any] = schema_defaults(RunConfig)
COMPONENT_SECTIONS = ("teacher", "data")


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
    distill = cfg.get("distill", {})
    if not any(e.startswith("distill") for e in errors):
        try:  # what the annotations cannot say (w_min <= w_max)
            ConsistencySettings(**distill)
        except (TypeError, ValueError) as err:
            errors.append(str(err))
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
    """Defaults merged under ``cfg``, validated; raises ``ConfigError`` listing every problem."""
    resolved = merge(DEFAULTS, cfg)
    errors = validate_run_config(resolved, check_rewards)
    if errors:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(errors))
    return resolved


class DistillationRecipe:
    """Consistency distillation with mixed reward feedback (T2V-Turbo), from one run config."""

    def __init__(self, cfg: dict, check_rewards: bool = True):
        self.cfg = resolve_run_config(cfg, check_rewards)
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
        if self.accelerator.is_main_process:  # one run per output_dir, taken before anything loads
            self.output_lock = FolderLock(self.output_dir, "training run").acquire()
        # read before anything heavy loads, so that an unreadable checkpoint is named at once
        checkpoint = self._find_resume_checkpoint(resume) if resume is not None else None
        set_seed(cfg["seed"])
        device = self.accelerator.device

        # teacher (frozen) and student
        from t2v_turbo.student import LoraSettings, build_student

        self.adapter = instantiate(cfg["teacher"])
        self.adapter.freeze()
        lora = cfg["student"]["lora"]
        self.student = build_student(
            self.adapter,
            cfg["student"]["time_cond_proj_dim"],
            lora=LoraSettings(**lora) if lora is not None else None,
            train_guidance_layer=cfg["student"]["train_guidance_layer"],
            seed=cfg["seed"],
        )
        if self.adapter.device != device:
            self.student.to(device)
        for param in self.student.parameters():
            if param.requires_grad:  # trained weights stay in float32 under any teacher dtype
                param.data = param.data.float()
        self.student.train()
        if train["gradient_checkpointing"]:
            enable_gradient_checkpointing(self.student)
        teacher_dtype = DTYPES[train["teacher_dtype"]]
        if self.adapter.device != device or next(self.adapter.unet.parameters()).dtype != teacher_dtype:
            self.adapter.to(device=device, dtype=teacher_dtype)
        self.trainable_names = [n for n, p in self.student.named_parameters() if p.requires_grad]

        # rewards (frozen, eval mode, configured dtype)
        from rewards.base import build_reward

        options = cfg["reward_options"]
        terms, seen = [], {}
        for spec in cfg["rewards"]:
            args, casts_itself = _with_reward_dtype(spec, options["dtype"])
            reward = build_reward(spec["name"], **args)
            reward.requires_grad_(False).eval().to(device)
            if not casts_itself:
                reward.to(DTYPES[options["dtype"]])
            seen[spec["name"]] = seen.get(spec["name"], 0) + 1
            label = spec["name"] if seen[spec["name"]] == 1 else f"{spec['name']}#{seen[spec['name']]}"
            terms.append(RewardTerm(label, reward, float(spec.get("weight", 1.0))))
        if options["video_only_fraction"] > 0 and not any(t.reward.granularity == "clip" for t in terms):
            raise ConfigError(
                f"reward_options.video_only_fraction={options['video_only_fraction']} needs a clip-level reward "
                f"(e.g. viclip, internvideo2); the configured rewards are {[t.name for t in terms]}"
            )
        self.objective = T2VTurboObjective(
            self.adapter,
            ConsistencySettings(**cfg["distill"]),
            terms,
            guidance_embedding_dim=cfg["student"]["time_cond_proj_dim"],
            video_only_fraction=options["video_only_fraction"],
            decode_chunk_size=options["decode_chunk_size"],
            vae_gradient_checkpointing=options["vae_gradient_checkpointing"],
            frame_window=options["frame_window"],
        )
        logger.info("rewards choose frames among the first %s pixel frames", options["frame_window"] or "all")
        self.ema = EMATarget(self.student, cfg["distill"]["ema_decay"]) if cfg["distill"]["target"] == "ema" else None

        # optimizer and LR schedule (stepped once per optimizer step, on every process alike)
        from diffusers.optimization import get_scheduler

        params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg["optimizer"], params=params)
        self.lr_scheduler = get_scheduler(
            cfg["lr_scheduler"]["name"],
            self.optimizer,
            num_warmup_steps=cfg["lr_scheduler"]["warmup_steps"],
            num_training_steps=train["max_steps"],
        )
        self.model, self.optimizer = self.accelerator.prepare(self.student, self.optimizer)

        # data: an instantiated dataset addressed by global sample positions
        self.dataset = instantiate(cfg["data"])
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
    def compute_loss(self, batch: dict, grad_norms: bool = False):
        """Encode the batch (no grad) and evaluate the objective on it."""
        device = self.accelerator.device
        positions = batch["positions"]
        with torch.no_grad():
            generator = sample_generator(self.cfg["seed"], positions[0], VAE_STREAM)
            latents = self.adapter.encode_video(batch["pixels"].to(device), generator=generator).float()
            text = self.adapter.encode_prompts(batch["captions"]).float()
            uncond = self.adapter.empty_prompt_embedding(len(positions)).float()
        with self.accelerator.autocast():
            return self.objective(
                self.model, latents, text, uncond, batch["captions"], positions,
                seed=self.cfg["seed"], target_unet=self.student, ema=self.ema, grad_norms=grad_norms,
            )

    def train_step(self, batch: dict, grad_norms: bool = False):
        """One micro-batch: loss and backward; at the end of an accumulation window the finite
        check, clipping and the optimizer step. Returns (objective output, gradient norm before
        clipping or None, why the optimizer step was skipped or None)."""
        accelerator, max_norm = self.accelerator, self.cfg["train"]["max_grad_norm"]
        grad_norm, skip = None, None
        with accelerator.accumulate(self.model):
            out = self.compute_loss(batch, grad_norms=grad_norms)
            accelerator.backward(out.loss)
            self._window_losses.append(out.loss.detach())
            if accelerator.sync_gradients:
                skip = self._skip_reason()
                if skip is None:
                    if max_norm:
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
                    self.optimizer.step()
                    if self.optimizer.step_was_skipped:
                        skip = "fp16 gradient overflow (the GradScaler skipped the update and lowered its scale)"
                self.optimizer.zero_grad(set_to_none=True)
                self._window_losses = []
        self.micro_step += 1
        return out, grad_norm, skip

    def _skip_reason(self) -> str | None:
        """Why this window's optimizer step must be skipped (non-finite loss or gradient), agreed by all
        processes. Under fp16 the GradScaler checks the gradients itself (an overflow lowers its scale)."""
        named = None if self.accelerator.scaler is not None else self.student.named_parameters()
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

        progress = tqdm(total=self.cfg["train"]["max_steps"], initial=self.global_step, desc="distill",
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
                if self.ema is not None:
                    self.ema.update(self.student)
            progress.update(1)
            if log_now:
                logs = dict(accumulated, lr=self.lr_scheduler.get_last_lr()[0])
                logs["train/skipped_steps"] = self.skipped_steps.total
                if grad_norm is not None:
                    logs["grad_norm/student"] = float(grad_norm)
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
        """Sample the validation prompts with the 4-step student; write one grid video (main process)."""
        val = self.cfg["validation"]
        if not val["prompts"] or not self.accelerator.is_main_process:
            return None
        from t2v_turbo.pipeline import T2VTurboPipeline
        from t2v_turbo.video_io import save_grid

        self.student.eval()
        pipeline = T2VTurboPipeline(self.adapter, self.student)
        generator = torch.Generator().manual_seed(val["seed"])
        videos = pipeline(val["prompts"], num_inference_steps=val["num_inference_steps"],
                          guidance_scale=val["guidance_scale"], num_frames=val["num_frames"], generator=generator)
        self.student.train()
        path = self.output_dir / "validation" / f"step-{step:06d}.{val['format']}"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(path, list(videos.cpu()), fps=val["fps"])
        return path

    # ---- checkpoints --------------------------------------------------------------------
    def _student_meta(self):
        from t2v_turbo.student import StudentMeta

        s, d = self.cfg["student"], self.cfg["distill"]
        # the geometry of the training clips and the guidance range are the student's sampling defaults
        geometry = {key: getattr(self.dataset, key, None) for key in ("num_frames", "height", "width", "fps")}
        return StudentMeta.for_adapter(
            self.adapter, time_cond_proj_dim=s["time_cond_proj_dim"], lora=s["lora"],
            train_guidance_layer=s["train_guidance_layer"],
            guidance_scale=self.cfg["validation"]["guidance_scale"],
            num_inference_steps=self.cfg["validation"]["num_inference_steps"],
            num_ddim_timesteps=d["num_ddim_timesteps"],
            timestep_scaling=d["timestep_scaling"],
            sigma_data=d["sigma_data"],
            guidance_range=[float(d["w_min"]), float(d["w_max"])],
            **geometry,
        )

    def training_state(self) -> dict:
        """What ``training_state.pt`` holds: plain data only (tensors, numbers, strings, lists, dicts)."""
        params = dict(self.student.named_parameters())
        scaler = self.accelerator.scaler
        return {
            "trainable": {n: params[n].detach().cpu().clone() for n in self.trainable_names},
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "global_step": self.global_step,
            "micro_step": self.micro_step,
            "skipped_videos": self.skipped_videos,
            "skipped_steps": self.skipped_steps.state_dict(),
            "num_processes": self.accelerator.num_processes,
        }

    def save_checkpoint(self, step: int) -> Path:
        """Write ``checkpoint-<step>/`` atomically: all files go to ``checkpoint-<step>.tmp`` first; a failed
        write (a full disk) removes it, keeps the previous checkpoints and raises ``CheckpointWriteError``."""
        from t2v_turbo.student import save_student, student_state_dict

        accelerator = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        self._require_finite_weights(final.name)
        tmp = self.output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"
        state = self.training_state() if accelerator.is_main_process else None
        needed = tensor_bytes(state) + tensor_bytes(student_state_dict(self.student))
        with write_guard(tmp, final, needed):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                save_student(tmp / "student", self.student, self._student_meta())
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
        """Refuse to write ``what`` when a trained weight (or its EMA) holds NaN or Inf."""
        params = dict(self.student.named_parameters())
        named = [(name, params[name]) for name in self.trainable_names]
        if self.ema is not None:
            named += [(f"ema.{name}", value) for name, value in self.ema.shadow.items()]
        bad = nonfinite_tensors(named)
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
            low, high = self.accelerator.reduce(step.clone(), "min"), self.accelerator.reduce(step.clone(), "max")
            if low != high:
                raise CheckpointError(f"--resume {resume}: the processes found different readable checkpoints "
                                      f"(steps {int(low)} to {int(high)}); check the rng_state_<rank>.pt files")
        return checkpoint

    def load_checkpoint(self, checkpoint: LoadedCheckpoint) -> None:
        """Restore weights, optimizer, grad scaler, LR schedule, EMA, counters and RNG from a read checkpoint."""
        folder, state = checkpoint.folder, checkpoint.state
        if state["num_processes"] != self.accelerator.num_processes:
            raise RuntimeError(
                f"{folder}: written by {state['num_processes']} processes, resuming with "
                f"{self.accelerator.num_processes}; the data position would differ"
            )
        params = dict(self.student.named_parameters())
        if set(state["trainable"]) != set(self.trainable_names):
            raise RuntimeError(f"{folder / STATE_NAME}: trainable parameters differ from the configured student")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.accelerator.scaler is not None and state["grad_scaler"] is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise RuntimeError(f"{folder}: distill.target=ema but the checkpoint holds no EMA state")
            self.ema.load_state_dict(state["ema"])
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
        from t2v_turbo.student import save_student, student_state_dict

        folder = self.output_dir / "student"
        self._require_finite_weights(f"the final student {folder}")
        if self.accelerator.is_main_process:
            with write_guard(None, folder, tensor_bytes(student_state_dict(self.student))):
                save_student(folder, self.student, self._student_meta())
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


def _accumulate(logs: dict, out, steps: int) -> None:
    """Mean over the micro-batches of an optimizer step of the loss and each term."""
    values = {"loss": out.loss, **{f"reward/{k}": v for k, v in out.rewards.items()},
              **{f"reward_term/{k}": v for k, v in out.terms.items() if k != "cd"}}
    if out.cd_loss is not None:
        values["loss/cd"] = out.cd_loss
    if out.decoded_latent_frames:
        values["data/decoded_latent_frames"] = torch.tensor(float(max(out.decoded_latent_frames)))
    for key, value in values.items():
        logs[key] = logs.get(key, 0.0) + float(value.detach()) / steps
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
