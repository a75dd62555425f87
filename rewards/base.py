"""The one interface of all reward models, and the registry configs name them by.

A reward takes decoded pixels (B, C, T, H, W) in [-1, 1] and the prompts, and returns one score
per sample (B,), differentiable with respect to the pixels: every preprocessing step
(resize, pad, crop, normalise) is a tensor op.

Frame-level rewards score some frames with an image-text model and average; clip-level rewards
score a clip of frames with a video-text model. ``frame_indices`` says which frames a reward
needs, so a trainer decodes only those (``score`` then receives exactly those frames, in order).
A reward may also weight its frames (InstructVideo's temporal attenuation): ``frame_weights``
returns those weights for the chosen indices, and ``score`` takes them as ``frame_weights=``.
Rewards whose ``frame_weights`` returns ``None`` (the default) are called without it.

Reward models are frozen: ``train()`` keeps every reward in eval mode.
"""

from __future__ import annotations

import abc
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., "VideoReward"]] = {}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from itself or its name (``"float32"``, ``"bfloat16"``, ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"`dtype` must be a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
    return resolved


def check_video_batch(video: torch.Tensor, prompts: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``video`` is (B, C, T, H, W) with one prompt per sample."""
    if video.ndim != 5:
        raise ValueError(f"reward input must be (B, C, T, H, W), got shape {tuple(video.shape)}")
    if len(prompts) != video.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for a batch of {video.shape[0]} videos")


class VideoReward(nn.Module, abc.ABC):
    #: "frame" (image-text model on selected frames) or "clip" (video-text model on a clip)
    granularity: ClassVar[str] = "frame"

    @abc.abstractmethod
    def frame_indices(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        """Indices (sorted, within [0, num_frames)) of the frames this reward will score."""

    def frame_weights(self, indices: list[int], num_frames: int) -> torch.Tensor | None:
        """Weights (T',) of the frames ``indices`` of a ``num_frames`` video, or None (unweighted)."""
        return None

    @abc.abstractmethod
    def score(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (B,) of the selected frames (B, C, T', H, W) in [-1, 1] against ``prompts``."""

    def train(self, mode: bool = True) -> "VideoReward":
        """Rewards are frozen models: stay in eval mode whatever ``mode`` is."""
        return super().train(False)

    def forward(
        self, video: torch.Tensor, prompts: Sequence[str], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        check_video_batch(video, prompts)
        idx = self.frame_indices(video.shape[2], generator)
        return self.score_selected(video[:, :, idx], prompts, idx, video.shape[2])

    def score_selected(
        self, frames: torch.Tensor, prompts: Sequence[str], indices: list[int], num_frames: int
    ) -> torch.Tensor:
        """``score`` of frames already taken at ``indices`` of a ``num_frames`` video, with the
        reward's frame weights when it has any (trainers that decode only some frames call this)."""
        weights = self.frame_weights(indices, num_frames)
        if weights is None:
            return self.score(frames, prompts)
        return self.score(frames, prompts, frame_weights=weights)


def register_reward(name: str) -> Callable:
    """Decorator: register a builder (class or function returning a ``VideoReward``) as ``name``."""

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


#: entry-point group through which other packages add rewards (the mini world registers
#: ``miniworld-image`` / ``miniworld-video`` this way, so this layer never imports it)
ENTRY_POINT_GROUP = "t2v_turbo.rewards"


def _load_builtin_rewards() -> None:
    # Importing the modules fills the registry; kept lazy so `import rewards` stays cheap.
    import importlib
    from importlib.metadata import entry_points

    modules = ["rewards.image_text", "rewards.video_text", "rewards.videoreward", "rewards.task",
               "rewards.preference_model"]
    modules += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for module in modules:
        importlib.import_module(module)


def list_rewards() -> list[str]:
    _load_builtin_rewards()
    return sorted(_REGISTRY)


def build_reward(name: str, **kwargs) -> VideoReward:
    """Build a registered reward by name (e.g. ``hpsv2.1``, ``viclip``) with its keyword arguments."""
    _load_builtin_rewards()
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; registered rewards: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
