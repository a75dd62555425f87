"""Reward-model training on preference pairs (VideoAlign's recipe), built from one run config.

``RewardModelRecipe(cfg)`` has the recipe shape of ``distill.trainer``: ``setup(resume)``, ``train()``,
``evaluate()``, ``save_checkpoint(step)``, ``save_final()``; ``t2v_turbo.commands.train_reward`` is its
entry point (``t2v-turbo train-reward CONFIG key=value ...``).

The model is a ``_component_`` returning a multi-dimensional reward model: an ``nn.Module`` with
``dimensions`` (names, one score each), ``score_pair(pixels_a, pixels_b, prompts, video_fps, generators)
-> (r_A, r_B)`` (each (B, D); ``generators``: one per pair for any random draw) and
``save_pretrained(folder, step, inference_config)``: ``rewards.videoreward.VideoRewardModel`` (Qwen2-VL
with one reward token per dimension) or ``rewards.preference_model.PreferenceRewardModel`` (a small
convolutional model on decoded videos, or on noisy latents for reward guidance). Its trainable
parameters are those with ``requires_grad``.

Per step, every dimension k contributes the configured loss (``rewards.preference``: ``btt`` with
``theta``, ``bt``, or ``reg`` of the absolute scores ``{dim}_a``/``{dim}_b`` minus ``center``) of
delta_k = r_A,k - r_B,k; the loss is their mean over dimensions. Evaluation on ``eval_data`` reports,
per dimension and overall (the sum of the dimensions' rewards against the ``Overall`` label, when the
CSV has one), the pairwise accuracy without ties and the tie-calibrated accuracy with ties. The final
model records the mean and std of its raw scores on the evaluation videos as its ``inference_config``,
which the ``videoreward`` reward z-normalises with.

Outputs in ``output_dir``: ``checkpoint-<step>/`` (``model/``, ``training_state.pt``, ``config.yaml``;
written atomically, the last ``train.keep_checkpoints`` kept), ``metrics.jsonl`` (one JSON line per log
and evaluation), ``model/`` (the final model) and ``eval.json`` (its final evaluation).
``setup(resume="latest" | path)`` restores weights, optimizer, LR schedule, step, data position and RNG,
so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from distill.checkpoints import (
    CHECKPOINT_PREFIX,
    CONFIG_NAME,
    STATE_NAME,
    LoadedCheckpoint,
    find_resume_checkpoint,
    list_checkpoints,
    rng_file_name,
    rng_state,
    set_rng_state,
)
from distill.config_schema import DataloaderSection, LrSchedulerSection, OptimizerArgs
from distill.data import GlobalPositionSampler, PositionedDataset
from distill.objectives.base import sample_generator
from distill.preference_data import collate_pairs
from rewards.preference import accuracy_with_ties, accuracy_without_ties, preference_loss
from t2v_turbo.config import COMPONENT_KEY, ConfigError, instantiate, merge, save_config, validate_component
from t2v_turbo.schema import Range, schema_defaults, schema_errors

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


@dataclasses.dataclass
class PreferenceLossSection:
    name: Literal["btt", "bt", "reg"] = "btt"
    #: the ties parameter of Bradley-Terry with ties (VideoAlign: 5)
    theta: Annotated[float, Range(gt=1)] = 5.0
    #: ``reg``: each video's score regresses (its absolute score - center)
    center: float = 0.0


@dataclasses.dataclass
class RewardTrainSection:
    max_steps: Annotated[int, Range(ge=1)] = 1000
    max_grad_norm: Annotated[float, Range(ge=0, note="0 disables clipping")] = 1.0
    checkpoint_every: Annotated[int, Range(ge=0, note="0 writes no checkpoints")] = 500
    keep_checkpoints: Annotated[int, Range(ge=1)] = 2
    log_every: Annotated[int, Range(ge=1)] = 10
    eval_every: Annotated[int, Range(ge=0, note="0 evaluates only at the end")] = 0
    #: frame rate of the data's clips (the model samples its frames from it)
    video_fps: Annotated[float, Range(gt=0)] = 8.0
    #: "auto": CUDA when available
    device: Literal["auto", "cpu"] = "auto"


@dataclasses.dataclass
class RewardModelRunConfig:
    """A reward-model run: ``model``, ``data`` (and ``eval_data``) are ``_component_`` nodes."""

    model: Any
    data: Any
    eval_data: Any = None
    output_dir: str = "runs/reward_model"
    seed: Annotated[int, Range(ge=0)] = 0
    loss: PreferenceLossSection = dataclasses.field(default_factory=PreferenceLossSection)
    dataloader: DataloaderSection = dataclasses.field(default_factory=DataloaderSection)
    optimizer: Any = dataclasses.field(default_factory=lambda: {COMPONENT_KEY: "torch.optim.AdamW", "lr": 1.0e-4})
    lr_scheduler: LrSchedulerSection = dataclasses.field(default_factory=LrSchedulerSection)
    train: RewardTrainSection = dataclasses.field(default_factory=RewardTrainSection)


def resolve_reward_model_config(cfg: dict) -> dict:
    """Defaults merged under ``cfg`` and every problem reported at once (``ConfigError``)."""
    resolved = merge(schema_defaults(RewardModelRunConfig), cfg)
    errors = schema_errors(resolved, RewardModelRunConfig)
    for name in ("model", "data", "eval_data", "optimizer"):
        node = resolved.get(name)
        if node is None and name == "eval_data":
            continue
        if not isinstance(node, dict) or COMPONENT_KEY not in node:
            errors.append(f"{name}: must be a mapping with a {COMPONENT_KEY!r} key")
        else:
            errors += validate_component(node, name, extra_kwargs=("params",) if name == "optimizer" else ())
    if isinstance(resolved.get("optimizer"), dict):
        args = {k: v for k, v in resolved["optimizer"].items() if k != COMPONENT_KEY}
        errors += schema_errors(args, OptimizerArgs, "optimizer", partial=True)
    from diffusers.optimization import SchedulerType

    names = [s.value for s in SchedulerType]
    if resolved["lr_scheduler"].get("name") not in names:
        errors.append(f"lr_scheduler.name={resolved['lr_scheduler'].get('name')!r} is not one of {names}")
    if errors:
        raise ConfigError("invalid reward-model config:\n  " + "\n  ".join(errors))
    return resolved


def pair_loss(loss: dict, delta: torch.Tensor, labels: torch.Tensor, scores=None, targets=None) -> torch.Tensor:
    """Mean over the D dimensions of the configured preference loss of delta (B, D) against labels (B, D)."""
    terms = []
    for k in range(delta.shape[1]):
        kwargs = {}
        if loss["name"] == "reg":
            if targets is None:
                raise ValueError("loss.name=reg needs the absolute scores ({dim}_a, {dim}_b columns) in the data")
            kwargs = {"scores": (scores[0][:, k], scores[1][:, k]), "targets": (targets[0][:, k], targets[1][:, k])}
        terms.append(preference_loss(loss["name"], delta[:, k], labels[:, k], loss["theta"], center=loss["center"],
                                     **kwargs))
    return torch.stack(terms).mean()


def pairwise_accuracies(delta: torch.Tensor, labels: torch.Tensor, dimensions, overall: torch.Tensor | None) -> dict:
    """{dim: {without_ties, with_ties, tie_threshold}} per dimension, plus ``overall`` (sum of the
    dimensions' deltas against the overall labels) when given."""
    out = {}
    for k, dim in enumerate(dimensions):
        with_ties, threshold = accuracy_with_ties(delta[:, k], labels[:, k])
        out[dim] = {"without_ties": accuracy_without_ties(delta[:, k], labels[:, k]), "with_ties": with_ties,
                    "tie_threshold": threshold}
    if overall is not None:
        with_ties, threshold = accuracy_with_ties(delta.sum(1), overall)
        out["overall"] = {"without_ties": accuracy_without_ties(delta.sum(1), overall), "with_ties": with_ties,
                          "tie_threshold": threshold}
    return out


class RewardModelRecipe:
    """Train a multi-dimensional reward model on preference pairs (see the module docstring)."""

    def __init__(self, cfg: dict):
        self.cfg = resolve_reward_model_config(cfg)
        self.output_dir = Path(self.cfg["output_dir"])
        self.step = 0

    def setup(self, resume: str | None = None) -> None:
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        torch.manual_seed(cfg["seed"])
        self.device = torch.device("cuda" if cfg["train"]["device"] == "auto" and torch.cuda.is_available() else "cpu")
        self.data = instantiate(cfg["data"])
        self.eval_data = instantiate(cfg["eval_data"]) if cfg["eval_data"] is not None else None
        self.model = instantiate(cfg["model"]).to(self.device)
        missing = [d for d in self.model.dimensions if d not in self.data.dimensions]
        if missing or len(self.model.dimensions) != len(self.data.dimensions):
            raise ConfigError(f"model scores {list(self.model.dimensions)} but the data has labels "
                              f"{list(self.data.dimensions)}")
        if cfg["loss"]["name"] == "reg" and not self.data.has_scores:
            raise ConfigError(f"loss.name=reg needs each video's absolute score: {self.data.path} has no "
                              f"{{dim}}_a / {{dim}}_b columns")
        self.model.train()
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.trainable:
            raise ConfigError("model: no parameter requires grad; nothing to train")
        self.optimizer = instantiate(cfg["optimizer"], params=list(self.trainable.values()))
        self.lr_scheduler = get_scheduler(cfg["lr_scheduler"]["name"], self.optimizer,
                                          num_warmup_steps=cfg["lr_scheduler"]["warmup_steps"],
                                          num_training_steps=cfg["train"]["max_steps"])
        if resume is not None:
            self.load_checkpoint(find_resume_checkpoint(resume, self.output_dir, rank=0))
        loader = cfg["dataloader"]
        sampler = GlobalPositionSampler(len(self.data), loader["batch_size"], seed=cfg["seed"],
                                        shuffle=loader["shuffle"], start_batch=self.step)
        self.dataloader = torch.utils.data.DataLoader(PositionedDataset(self.data), batch_sampler=sampler,
                                                      num_workers=loader["num_workers"], collate_fn=collate_pairs)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.output_dir / CONFIG_NAME)
        logger.info("reward model: %d trainable tensors, %d values", len(self.trainable),
                    sum(p.numel() for p in self.trainable.values()))

    def scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_A, r_B) of a batch; a model's random draws per pair (a latent model's t and noise) come from the
        generator of (seed, the pair's global position; its index when evaluating)."""
        positions = batch.get("positions", batch["indices"])
        generators = [sample_generator(self.cfg["seed"], p) for p in positions]
        return self.model.score_pair(batch["pixels_a"].to(self.device), batch["pixels_b"].to(self.device),
                                     batch["prompts"], self.cfg["train"]["video_fps"], generators)

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        r_a, r_b = self.scores(batch)
        targets = (batch["scores_a"], batch["scores_b"]) if "scores_a" in batch else None
        labels = batch["labels"].to(self.device)
        return pair_loss(self.cfg["loss"], r_a - r_b, labels, (r_a, r_b), targets), (r_a - r_b).detach()

    def train(self) -> dict:
        from tqdm.auto import tqdm

        train = self.cfg["train"]
        data = iter(self.dataloader)
        progress = tqdm(total=train["max_steps"], initial=self.step, desc="reward model")
        window = []
        while self.step < train["max_steps"]:
            batch = next(data)
            loss, delta = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), train["max_grad_norm"])
            self.optimizer.step()
            self.lr_scheduler.step()
            self.step += 1
            window.append((float(loss.detach()), delta.cpu(), batch["labels"]))
            progress.update(1)
            if self.step % train["log_every"] == 0:
                deltas, labels = torch.cat([w[1] for w in window]), torch.cat([w[2] for w in window])
                accuracy = {d: accuracy_without_ties(deltas[:, k], labels[:, k])
                            for k, d in enumerate(self.model.dimensions)}
                self.log({"loss": float(np.mean([w[0] for w in window])), "train_accuracy_without_ties": accuracy,
                          "lr": self.lr_scheduler.get_last_lr()[0]})
                progress.set_postfix(loss=f"{np.mean([w[0] for w in window]):.4f}")
                window = []
            if train["checkpoint_every"] and self.step % train["checkpoint_every"] == 0:
                self.save_checkpoint(self.step)
            if train["eval_every"] and self.step % train["eval_every"] == 0 and self.eval_data is not None:
                self.log({"eval": self.evaluate()[0]})
        progress.close()
        return self.save_final()

    @torch.no_grad()
    def evaluate(self, dataset=None) -> tuple[dict, torch.Tensor]:
        """(accuracies per dimension and overall, the raw scores (2N, D) of every video) on ``dataset``
        (default: ``eval_data``)."""
        dataset = dataset if dataset is not None else self.eval_data
        self.model.eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.cfg["dataloader"]["batch_size"],
                                             collate_fn=collate_pairs)
        deltas, labels, overall, scores = [], [], [], []
        for batch in loader:
            r_a, r_b = self.scores(batch)
            deltas.append((r_a - r_b).cpu())
            scores += [r_a.cpu(), r_b.cpu()]
            labels.append(batch["labels"])
            if "overall" in batch:
                overall.append(batch["overall"])
        self.model.train()
        delta = torch.cat(deltas)
        result = pairwise_accuracies(delta, torch.cat(labels), self.model.dimensions,
                                     torch.cat(overall) if overall else None)
        return result, torch.cat(scores)

    def log(self, record: dict) -> None:
        record = {"step": self.step, **record}
        logger.info("%s", json.dumps(record))
        with open(self.output_dir / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model", step)
        state = {"trainable": {n: p.detach().cpu().clone() for n, p in self.trainable.items()},
                 "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                 "step": step}
        torch.save(state, tmp / STATE_NAME)
        torch.save(rng_state(), tmp / rng_file_name(0))
        save_config(self.cfg, tmp / CONFIG_NAME)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(self.output_dir)[: -self.cfg["train"]["keep_checkpoints"]]:
            shutil.rmtree(old)
        return final

    def load_checkpoint(self, checkpoint: LoadedCheckpoint) -> None:
        """Restore weights, optimizer, LR schedule, step and RNG from a checkpoint read as plain data (a
        crafted ``--resume`` folder cannot run code: ``distill.checkpoints.read_plain``)."""
        folder, state = checkpoint.folder, checkpoint.state
        if set(state["trainable"]) != set(self.trainable):
            raise RuntimeError(f"{folder / STATE_NAME}: trainable parameters differ from the configured model")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                self.trainable[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step = state["step"]
        set_rng_state(checkpoint.rng)
        logger.info("resumed from %s at step %d", folder, self.step)

    def save_final(self) -> dict:
        """Evaluate (``eval_data``, else the first pairs of ``data``), write ``model/`` with the raw scores'
        per-dimension mean/std as its ``inference_config``, and ``eval.json``; returns the evaluation."""
        dataset = self.eval_data
        if dataset is None:
            dataset = torch.utils.data.Subset(self.data, range(min(len(self.data), 256)))
            dataset.dimensions = self.data.dimensions
        result, scores = self.evaluate(dataset)
        stats = {}
        for k, dim in enumerate(self.model.dimensions):
            stats[f"{dim}_mean"], stats[f"{dim}_std"] = float(scores[:, k].mean()), float(scores[:, k].std())
        self.model.save_pretrained(self.output_dir / "model", self.step, inference_config=stats)
        summary = {"step": self.step, "evaluated_on": "eval_data" if self.eval_data is not None else "data[:256]",
                   "pairs": len(dataset), "accuracy": result, "inference_config": stats}
        (self.output_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        self.log({"eval": result})
        return summary
