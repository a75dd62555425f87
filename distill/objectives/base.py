"""The contract between the training recipe and an objective.

One trainer (``distill.trainer.TrainingRecipe``) runs every recipe; what differs between T2V-Turbo,
VADER, InstructVideo (and the preference objectives built on the same contract) is the objective, a
``_component_`` of the run config (``objective:``). The trainer builds the teacher adapter, the
trained model, the rewards, the data and the optimizer, prepares each batch (``TrainingBatch``:
VAE latents and text embeddings, skipped when the batch already carries them), and calls the
objective; it owns accelerate, gradient accumulation, the non-finite guard, clipping, logging,
validation, checkpoints and export. An objective owns only the loss.

Life cycle of an objective object:

1. ``Objective(**config_keys)``: an objective is a dataclass of its hyperparameters (the constructor is
   the config); the annotations are its schema (``t2v_turbo.schema``: types, ``Range`` bounds, ``Literal``
   choices), checked all at once in ``__post_init__`` (a ``ValueError`` naming ``objective.<key>``); the
   trainer builds it while validating the config, before any weights load.
2. ``bind(run)``: the built run (``RunContext``): adapter, trained model, rewards, seed, device; called once the
   trainer has prepared the network for its engine, so that copies of trainable weights (EMA, a reference
   snapshot) take their form (under FSDP, sharded like the parameters).
3. ``objective(model, batch, grad_norms)`` per micro-batch -> ``ObjectiveOutput``.
4. ``after_optimizer_step()`` after each applied optimizer step (EMA update, reference refresh).
5. ``state_dict()`` / ``load_state_dict()``: state that must resume bit-exactly (plain tensors,
   numbers, strings, lists and dicts, so the training state loads with ``weights_only=True``).

Randomness: everything an objective draws for a sample comes from ``sample_generator(seed, position,
stream)``, keyed by the sample's global position, so draws do not depend on the batch size, the
number of processes, or on resuming.

Sharded network (FSDP): each forward of the trained network is a collective, so an objective must call it the
same number of times on every process whatever its samples; one that cannot says so in ``sharding_errors``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

from t2v_turbo.schema import schema_errors

if TYPE_CHECKING:
    from distill.model import TrainedModel
    from distill.objectives.rewarding import RewardTerm

#: independent random streams keyed by a global sample position
SAMPLE_STREAM, FRAME_STREAM, VAE_STREAM, CHAIN_STREAM, LOSER_VAE_STREAM = 0, 1, 2, 3, 4
#: what a batch must hold for an objective (``Objective.batch_inputs``)
BATCH_INPUTS = ("videos", "prompts", "videos_or_prompts")


def sample_generator(seed: int, position: int, stream: int = SAMPLE_STREAM) -> torch.Generator:
    """A generator seeded by (seed, global position, stream): ((seed * 1_000_003 + position) * 8 + stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + position) * 8 + stream)


@dataclasses.dataclass
class TrainingBatch:
    """One micro-batch as objectives see it.

    ``latents`` (B, c, T, h, w) are the clips' VAE latents, ``None`` for a prompt-only batch (or when the
    objective does not use videos); ``text_embedding`` and ``uncond_embedding`` (B, L, D) encode the
    prompts and the empty prompt; ``positions`` are the samples' global positions; ``extras`` holds the
    dataset's other per-sample fields, tensors on the device (e.g. a preference pair's second clip, which
    the objective encodes with ``run.adapter``).
    """

    prompts: list[str]
    positions: list[int]
    text_embedding: torch.Tensor
    uncond_embedding: torch.Tensor
    latents: torch.Tensor | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        size = len(self.prompts)
        if len(self.positions) != size or self.text_embedding.shape[0] != size:
            raise ValueError(f"{len(self.positions)} positions and {self.text_embedding.shape[0]} text embeddings "
                             f"for {size} prompts")
        if self.latents is not None and self.latents.shape[0] != size:
            raise ValueError(f"latents hold {self.latents.shape[0]} clips for {size} prompts")


@dataclasses.dataclass
class RunContext:
    """What ``Objective.bind`` receives: the frozen teacher adapter, the trained model (``TrainedModel``:
    its plain module ``.unet`` and its record ``.meta``), the rewards (``RewardTerm``s, frozen, on the
    device), the run seed and the device."""

    adapter: Any
    model: "TrainedModel"
    rewards: list["RewardTerm"]
    seed: int
    device: torch.device


@dataclasses.dataclass
class ObjectiveOutput:
    """``loss`` = sum of ``terms`` (each term already weighted and averaged over the batch).

    ``rewards``: mean score of each reward (logged ``reward/<name>``); ``scalars``: other values to log,
    by their full tag (``loss/cd``, ``vader/grad_steps``); ``reward_grad_norms``: when asked for, the norm
    of d(term)/d(pixels) of each reward term; ``decoded``: (samples, pixel frames) VAE-decoded per group,
    ``decoded_latent_frames``: the latent frames each group's decode ran through (a causal VAE decodes up to
    the last frame needed).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    rewards: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    scalars: dict[str, torch.Tensor | float] = dataclasses.field(default_factory=dict)
    reward_grad_norms: dict[str, float] = dataclasses.field(default_factory=dict)
    decoded: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    decoded_latent_frames: list[int] = dataclasses.field(default_factory=list)


class Objective(abc.ABC):
    """A training objective: the loss of one micro-batch (see the module docstring for the life cycle)."""

    #: what a batch must hold: "videos" (clips + captions), "prompts" (captions; clips are ignored and
    #: never encoded) or "videos_or_prompts" (clips when the dataset has them, else prompts)
    batch_inputs: ClassVar[str] = "videos"
    #: which trained models it can train: "student" (with a guidance layer), "teacher" (full-step)
    model_kinds: ClassVar[tuple[str, ...]] = ("student", "teacher")
    #: whether it scores rewards (the trainer refuses a non-empty ``rewards:`` list otherwise)
    uses_rewards: ClassVar[bool] = True
    #: whether at least one reward is required
    needs_rewards: ClassVar[bool] = False
    #: whether the data must be preference pairs (a dataset with ``has_pairs``: each sample's clip is the
    #: preferred one, ``pixels_loser`` in ``TrainingBatch.extras`` the rejected one)
    needs_pairs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Check every field against its annotation, all problems at once."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        errors = schema_errors(values, type(self), "objective")
        if errors:
            raise ValueError("; ".join(errors))

    def bind(self, run: RunContext) -> None:
        """Attach the built run (adapter, trained model, rewards, seed, device)."""
        self.run = run

    @abc.abstractmethod
    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        """The loss of one micro-batch. ``model`` is the trained network as the trainer prepared it
        (possibly a DDP wrapper) and is called with gradient; ``self.run.model.unet`` is the plain module
        for calls without gradient (under FSDP the same sharded module)."""

    def after_optimizer_step(self) -> None:
        """Called after every applied optimizer step (not after skipped ones)."""

    def state_dict(self) -> dict:
        """Objective state a resumed run must restore bit-exactly (weights_only-loadable types)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise RuntimeError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")

    def weights(self) -> list[tuple[str, torch.Tensor]]:
        """Named tensors the objective trains or tracks besides the model (e.g. EMA weights): they are
        checked for NaN/Inf before any checkpoint or final model is written."""
        return []

    def model_meta(self) -> dict:
        """Fields of ``StudentMeta`` the trained model records because of this objective (a consistency
        objective records its DDIM grid and boundary scalings, which the student's sampler needs)."""
        return {}

    def sharding_errors(self) -> list[str]:
        """Why this objective cannot train a network sharded over processes (FSDP: every process must call the
        network the same number of times per micro-batch); empty when it can."""
        return []

    def check_run(self, model_kind: str, reward_names: Sequence[str]) -> list[str]:
        """Problems of this objective with the run's model kind ("student" | "teacher") and reward names,
        found before anything heavy loads (empty when fine)."""
        name = type(self).__name__
        errors = []
        if model_kind not in self.model_kinds:
            errors.append(f"objective: {name} trains a {' or '.join(self.model_kinds)}, but model: builds a "
                          f"{model_kind} ({'no guidance layer' if model_kind == 'teacher' else 'a distilled student'})")
        if reward_names and not self.uses_rewards:
            errors.append(f"rewards: {name} scores no rewards; remove the rewards list ({list(reward_names)})")
        if self.needs_rewards and not reward_names:
            errors.append(f"rewards: {name} needs at least one reward")
        return errors
