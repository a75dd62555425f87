"""Reward terms of an objective: the loss form of a reward score, and decoding only the frames rewards need.

A ``RewardTerm`` is one entry of the run config's ``rewards:`` list, built: the frozen reward model,
its weight and its loss form. Forms (``reward_loss``), per sample, with score r:

- ``linear`` (default): weight * (target - r). With target 0 this is T2V-Turbo's -beta R; VADER's HPS
  loss 1 - s is target 1, weight 1; InstructVideo's 1 - r likewise.
- ``abs``: weight * |target - r|, VADER's L1 forms: aesthetic 0.1 |10 - r| (weight 0.1, target 10),
  PickScore |1 - s / 100| (weight 0.01, target 100).

The linear form's gradient does not depend on the target (it only shifts the logged loss); the
absolute form stops pushing once the score reaches the target.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Sequence

import torch

from rewards.base import VideoReward
from t2v_turbo.schema import Range

REWARD_LOSSES = ("linear", "abs")


def reward_loss(scores: torch.Tensor, form: str = "linear", weight: float = 1.0, target: float = 0.0) -> torch.Tensor:
    """Per-sample loss of reward ``scores`` (B,): weight (target - r) ('linear') or weight |target - r| ('abs')."""
    if form == "linear":
        return weight * (target - scores)
    if form == "abs":
        return weight * (target - scores).abs()
    raise ValueError(f"reward loss {form!r} is not one of {REWARD_LOSSES}")


@dataclasses.dataclass
class RewardTerm:
    """One weighted reward of an objective; its loss per sample is ``reward_loss(r, loss, weight, target)``."""

    name: str
    reward: VideoReward
    weight: float
    loss: str = "linear"
    target: float = 0.0

    def __post_init__(self):
        if self.loss not in REWARD_LOSSES:
            raise ValueError(f"rewards: {self.name}.loss={self.loss!r} is not one of {REWARD_LOSSES}")

    def per_sample_loss(self, scores: torch.Tensor) -> torch.Tensor:
        return reward_loss(scores, self.loss, self.weight, self.target)


@dataclasses.dataclass
class ScoredFrames:
    """What one reward term scored: ``scores`` (n,) of the ``rows`` it scored, on ``frames`` (n, C, T', H, W)."""

    scores: torch.Tensor
    frames: torch.Tensor
    rows: list[int]


@dataclasses.dataclass
class DecodeOptions:
    """How reward frames are VAE-decoded with gradient: ``chunk_size`` frames at a time, each chunk's
    decoder activations recomputed in backward when ``checkpointing``."""

    chunk_size: int = 8
    checkpointing: bool = False


@dataclasses.dataclass
class RewardDecoding:
    """The config keys of an objective that decodes reward frames with gradient (a dataclass mixin):
    ``decode_chunk_size`` frames per VAE call, each chunk's decoder activations recomputed in backward when
    ``vae_gradient_checkpointing``."""

    decode_chunk_size: Annotated[int, Range(ge=1)] = 8
    vae_gradient_checkpointing: bool = False

    @property
    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(self.decode_chunk_size, self.vae_gradient_checkpointing)


def decode_and_score(
    adapter,
    latents: torch.Tensor,
    terms: Sequence[RewardTerm],
    prompts: Sequence[str],
    frame_indices: Sequence[Sequence[int]],
    rows: Sequence[Sequence[int]] | None = None,
    frame_weights: Sequence[torch.Tensor | None] | None = None,
    options: DecodeOptions = DecodeOptions(),
) -> tuple[list[ScoredFrames | None], list[tuple[int, int]], list[int]]:
    """Decode, with gradient, only the frames some reward needs, and score every reward on exactly its frames.

    ``frame_indices[i]`` are the pixel frames term i scores (of F = ``adapter.pixel_frames(latents.shape[2])``),
    ``rows[i]`` the samples it scores (default: all). Samples needing the same set of frames (the union
    over the terms that score them) are decoded together by ``adapter.decode_frames``, each frame once. A
    term is scored with its reward's own frame weights (``score_selected``), or with ``frame_weights[i]``
    when that is given (InstructVideo's TAR). Returns one ``ScoredFrames`` per term (``None`` for a term
    with no rows), (samples, pixel frames) per decoded group and the latent frames each group's decode ran
    through.
    """
    batch, num_frames = latents.shape[0], adapter.pixel_frames(latents.shape[2])
    rows = [list(range(batch)) for _ in terms] if rows is None else [list(r) for r in rows]
    needed = [sorted({f for i, r in enumerate(rows) if b in r for f in frame_indices[i]}) for b in range(batch)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for b in range(batch):
        if needed[b]:
            groups.setdefault(tuple(needed[b]), []).append(b)
    pixels_of: dict[int, tuple[torch.Tensor, dict[int, int]]] = {}
    decoded, latent_frames = [], []
    for frames, members in groups.items():
        pixels = adapter.decode_frames(latents[members], frames, options.chunk_size, options.checkpointing)
        decoded.append((len(members), len(frames)))
        latent_frames.append(adapter.latent_frames_needed(frames))
        where = {f: j for j, f in enumerate(frames)}
        for j, b in enumerate(members):
            pixels_of[b] = (pixels[j], where)
    scored: list[ScoredFrames | None] = []
    for i, (term, idx, members) in enumerate(zip(terms, frame_indices, rows)):
        if not members:
            scored.append(None)
            continue
        frames = torch.stack([pixels_of[b][0][:, [pixels_of[b][1][f] for f in idx]] for b in members])
        reward_dtype = next(term.reward.parameters(), frames).dtype
        member_prompts = [prompts[b] for b in members]
        weights = frame_weights[i] if frame_weights is not None else None
        if weights is None:
            scores = term.reward.score_selected(frames.to(reward_dtype), member_prompts, list(idx), num_frames)
        else:
            scores = term.reward.score(frames.to(reward_dtype), member_prompts, frame_weights=weights)
        scored.append(ScoredFrames(scores.float(), frames, members))
    return scored, decoded, latent_frames


def pixel_grad_norms(terms: dict[str, torch.Tensor], scored: dict[str, ScoredFrames]) -> dict[str, float]:
    """The norm of d(term)/d(pixels) of each reward term, on the decoded frames that term scored."""
    norms = {}
    for name, item in scored.items():
        if terms[name].requires_grad:
            (grad,) = torch.autograd.grad(terms[name], item.frames, retain_graph=True)
            norms[name] = float(grad.float().norm())
    return norms


def batch_mean_terms(
    terms: Sequence[RewardTerm], scored: Sequence[ScoredFrames], grad_norms: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """(loss terms, mean scores, pixel gradient norms) of reward terms that scored every sample of a batch:
    term i = mean_b loss_i(r_i,b)."""
    losses, means, by_name = {}, {}, {}
    for term, item in zip(terms, scored):
        means[term.name] = item.scores.mean()
        losses[term.name] = term.per_sample_loss(item.scores).mean()
        by_name[term.name] = item
    return losses, means, pixel_grad_norms(losses, by_name) if grad_norms else {}
