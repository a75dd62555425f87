"""Which frames of a video a reward scores.

Pure functions of the frame count and a ``torch.Generator`` (pass a seeded one for
reproducible choices). Every selector returns sorted, distinct indices in ``[0, num_frames)``,
except ``clip_frames`` on a video shorter than its span (evenly spaced, with repeats).
``FrameSelection`` bundles one reward's choice so it lives in the reward's config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Fixed selections used by VADER ("one random frame" is ``random_frames(num_frames, 1)``).
PRESETS = ("first", "middle", "last", "first_middle_last", "every_second", "all")
SELECTION_MODES = ("random", "segmental") + PRESETS


def _check_count(name: str, count: int, num_frames: int) -> None:
    if count < 1 or count > num_frames:
        raise ValueError(f"`{name}` must be in [1, num_frames={num_frames}], got {count}")


def random_frames(num_frames: int, m: int = 5, generator: torch.Generator | None = None) -> list[int]:
    """``m`` distinct frames drawn uniformly at random, sorted (T2V-Turbo's image reward; the
    public code uses ``m = 5``, the paper ``M = 6``)."""
    _check_count("m", m, num_frames)
    return sorted(torch.randperm(num_frames, generator=generator)[:m].tolist())


def segment_bounds(num_frames: int, segments: int) -> list[tuple[int, int]]:
    """Split ``[0, num_frames)`` into ``segments`` contiguous parts of near-equal length
    (``[floor(i * F / S), floor((i + 1) * F / S))``)."""
    _check_count("segments", segments, num_frames)
    edges = [i * num_frames // segments for i in range(segments + 1)]
    return list(zip(edges[:-1], edges[1:]))


def segmental_frames(num_frames: int, segments: int = 4, generator: torch.Generator | None = None) -> list[int]:
    """One uniformly random frame per segment (InstructVideo's Segmental Video Reward, SegVR:
    16 frames, 4 segments)."""
    return [int(torch.randint(lo, hi, (1,), generator=generator)) for lo, hi in segment_bounds(num_frames, segments)]


def temporal_attenuation_weights(indices: list[int], num_frames: int, lam: float = 1.0) -> torch.Tensor:
    """InstructVideo's Temporally Attenuated Reward (TAR) weights ``exp(-lam * |f - F / 2|)``.

    ``f`` is the 0-based frame index and ``F`` the number of frames of the whole video. The
    weights are NOT normalised: as in InstructVideo, the reward is the plain mean over the
    selected frames of ``weight * score``, so frames far from the middle count less and the
    reward's scale shrinks with ``lam``. ``lam = 0`` gives weight 1 everywhere.
    """
    frames = torch.as_tensor(indices, dtype=torch.float32)
    return torch.exp(-lam * (frames - num_frames / 2).abs())


def clip_frames(num_frames: int, n: int = 8, stride: int = 2, generator: torch.Generator | None = None) -> list[int]:
    """``n`` frames ``stride`` apart from a uniformly random start (the video rewards: 8 frames at
    stride 2, so 16 frames give start 0 or 1).

    A video shorter than the span ``(n - 1) * stride + 1`` gives ``n`` evenly spaced indices over
    the whole video, ``round(linspace(0, num_frames - 1, n))``: sorted, with repeats when the
    video has fewer than ``n`` frames, and no randomness.
    """
    if n < 1 or stride < 1 or num_frames < 1:
        raise ValueError(f"`n`, `stride` and `num_frames` must be >= 1, got {n}, {stride} and {num_frames}")
    span = (n - 1) * stride + 1
    if span > num_frames:
        return torch.linspace(0, num_frames - 1, n).round().long().tolist()
    start = int(torch.randint(0, num_frames - span + 1, (1,), generator=generator))
    return list(range(start, start + span, stride))


def preset_frames(num_frames: int, preset: str) -> list[int]:
    """A fixed selection by name, one of ``PRESETS``."""
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}")
    last, middle = num_frames - 1, num_frames // 2
    if preset == "first":
        return [0]
    if preset == "middle":
        return [middle]
    if preset == "last":
        return [last]
    if preset == "first_middle_last":
        return sorted({0, middle, last})
    if preset == "every_second":
        return list(range(0, num_frames, 2))
    if preset == "all":
        return list(range(num_frames))
    raise ValueError(f"unknown frame preset {preset!r}; choose one of {PRESETS}")


@dataclass
class FrameSelection:
    """How a frame-level reward picks its frames, and how it weights them.

    Args:
        mode: ``"random"`` (``num_frames`` random frames), ``"segmental"`` (one random frame in
            each of ``segments`` segments) or one of ``PRESETS``.
        num_frames: frames drawn by ``"random"``.
        segments: segments of ``"segmental"``.
        tar_lambda: if set, weight each selected frame by ``temporal_attenuation_weights``
            with this lambda (InstructVideo uses 1.0); ``None`` weights all frames equally.
    """

    mode: str = "random"
    num_frames: int = 5
    segments: int = 4
    tar_lambda: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"`mode` must be one of {SELECTION_MODES}, got {self.mode!r}")

    def indices(self, video_frames: int, generator: torch.Generator | None = None) -> list[int]:
        if self.mode == "random":
            return random_frames(video_frames, min(self.num_frames, video_frames), generator)
        if self.mode == "segmental":
            return segmental_frames(video_frames, self.segments, generator)
        return preset_frames(video_frames, self.mode)

    def weights(self, indices: list[int], video_frames: int) -> torch.Tensor | None:
        if self.tar_lambda is None:
            return None
        return temporal_attenuation_weights(indices, video_frames, self.tar_lambda)
