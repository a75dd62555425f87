"""VBench leaderboard aggregation: per-dimension normalisation, Quality, Semantic and Total.

The constants are the leaderboard's (see ``docs/vbench.md``)::

    normalized_d = (raw_d - min_d) / (max_d - min_d) * weight_d      (no clipping)
    Quality      = sum(normalized_d over the 7 quality dimensions) / 6.5
    Semantic     = sum(normalized_d over the 9 semantic dimensions) / 9
    Total        = (4 * Quality + Semantic) / 5

The official script silently counts a missing dimension as 0. Here a group score is computed
only when every dimension of its group is present and Total only when all 16 are; otherwise the
result is *partial*: it lists the missing dimensions and carries ``None`` for the scores it
cannot compute honestly. ``partial_quality`` / ``partial_semantic`` (weighted means over the
dimensions that are present) are given for orientation and are always labelled as such.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

QUALITY = "Quality"
SEMANTIC = "Semantic"

#: dimension -> (min, max, weight, group), the leaderboard's normalisation constants
NORMALIZATION: dict[str, tuple[float, float, float, str]] = {
    "subject_consistency": (0.1462, 1.0, 1.0, QUALITY),
    "background_consistency": (0.2615, 1.0, 1.0, QUALITY),
    "temporal_flickering": (0.6293, 1.0, 1.0, QUALITY),
    "motion_smoothness": (0.7060, 0.9975, 1.0, QUALITY),
    "dynamic_degree": (0.0, 1.0, 0.5, QUALITY),
    "aesthetic_quality": (0.0, 1.0, 1.0, QUALITY),
    "imaging_quality": (0.0, 1.0, 1.0, QUALITY),
    "object_class": (0.0, 1.0, 1.0, SEMANTIC),
    "multiple_objects": (0.0, 1.0, 1.0, SEMANTIC),
    "human_action": (0.0, 1.0, 1.0, SEMANTIC),
    "color": (0.0, 1.0, 1.0, SEMANTIC),
    "spatial_relationship": (0.0, 1.0, 1.0, SEMANTIC),
    "scene": (0.0, 0.8222, 1.0, SEMANTIC),
    "appearance_style": (0.0009, 0.2855, 1.0, SEMANTIC),
    "temporal_style": (0.0, 0.364, 1.0, SEMANTIC),
    "overall_consistency": (0.0, 0.364, 1.0, SEMANTIC),
}
DIMENSIONS: tuple[str, ...] = tuple(NORMALIZATION)
QUALITY_DIMENSIONS: tuple[str, ...] = tuple(d for d, v in NORMALIZATION.items() if v[3] == QUALITY)
SEMANTIC_DIMENSIONS: tuple[str, ...] = tuple(d for d, v in NORMALIZATION.items() if v[3] == SEMANTIC)
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0


def normalize(dimension: str, raw: float) -> float:
    """``(raw - min) / (max - min) * weight`` for one dimension (raw on VBench's 0..1 scale)."""
    if dimension not in NORMALIZATION:
        raise KeyError(f"unknown VBench dimension {dimension!r}; known: {', '.join(DIMENSIONS)}")
    lo, hi, weight, _ = NORMALIZATION[dimension]
    return (raw - lo) / (hi - lo) * weight


@dataclass
class AggregateResult:
    """Scores on VBench's 0..1 scale; ``None`` where a group is incomplete."""

    raw: dict[str, float]
    normalized: dict[str, float]
    missing: list[str]
    quality: float | None
    semantic: float | None
    total: float | None
    partial_quality: float | None = None
    partial_semantic: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_json(self) -> dict:
        out = asdict(self)
        out["complete"] = self.complete
        out["percent"] = {
            "quality": _pct(self.quality),
            "semantic": _pct(self.semantic),
            "total": _pct(self.total),
            "dimensions": {d: _pct(v) for d, v in self.raw.items()},
        }
        return out


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 4)


def _group_score(normalized: Mapping[str, float], dims: tuple[str, ...]) -> tuple[float | None, float | None]:
    """(full score or None if a dimension is missing, weighted mean over present dimensions or None)."""
    present = [d for d in dims if d in normalized]
    if not present:
        return None, None
    weights = sum(NORMALIZATION[d][2] for d in present)
    partial = sum(normalized[d] for d in present) / weights
    if len(present) < len(dims):
        return None, partial
    return sum(normalized[d] for d in dims) / sum(NORMALIZATION[d][2] for d in dims), partial


def aggregate(raw_scores: Mapping[str, float], scale: float = 1.0, sources: Mapping[str, str] | None = None) -> AggregateResult:
    """Aggregate per-dimension raw scores into the leaderboard's numbers.

    ``scale`` divides the inputs: pass ``100`` for percent inputs (as the leaderboard prints them).
    Unknown dimension names raise ``KeyError``; non-finite scores raise ``ValueError``.
    """
    raw: dict[str, float] = {}
    for dim, value in raw_scores.items():
        if dim not in NORMALIZATION:
            raise KeyError(f"unknown VBench dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        value = float(value) / scale
        if not math.isfinite(value):
            raise ValueError(f"VBench dimension {dim!r} has a non-finite score {value!r}")
        raw[dim] = value
    raw = {d: raw[d] for d in DIMENSIONS if d in raw}  # canonical order
    normalized = {d: normalize(d, v) for d, v in raw.items()}
    missing = [d for d in DIMENSIONS if d not in raw]
    quality, partial_quality = _group_score(normalized, QUALITY_DIMENSIONS)
    semantic, partial_semantic = _group_score(normalized, SEMANTIC_DIMENSIONS)
    total = None
    if quality is not None and semantic is not None:
        total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return AggregateResult(
        raw=raw,
        normalized=normalized,
        missing=missing,
        quality=quality,
        semantic=semantic,
        total=total,
        partial_quality=partial_quality if quality is None else None,
        partial_semantic=partial_semantic if semantic is None else None,
        sources=dict(sources or {}),
    )


def read_eval_results(path: str | os.PathLike) -> dict[str, float]:
    """Read one VBench ``*_eval_results.json`` ({dimension: [score, per_video_list]}) -> {dimension: score}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{dimension: [score, per_video_list]}}, got {type(data).__name__}")
    scores: dict[str, float] = {}
    for dim, value in data.items():
        score = value[0] if isinstance(value, (list, tuple)) else value
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise ValueError(f"{path}: dimension {dim!r} has no numeric score (got {score!r})")
        if dim not in NORMALIZATION:
            raise ValueError(f"{path}: unknown VBench dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        scores[dim] = float(score)
    return scores


def collect_eval_results(directory: str | os.PathLike) -> tuple[dict[str, float], dict[str, str]]:
    """Merge every ``*_eval_results.json`` in ``directory`` (not recursive).

    Returns ({dimension: score}, {dimension: file it came from}). When several files hold the same
    dimension, the most recently modified file wins (a re-run replaces an older result).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"VBench results directory not found: {directory}")
    files = sorted(directory.glob("*_eval_results.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        raise FileNotFoundError(f"no *_eval_results.json in {directory}")
    scores: dict[str, float] = {}
    sources: dict[str, str] = {}
    for path in files:
        for dim, score in read_eval_results(path).items():
            scores[dim] = score
            sources[dim] = path.name
    return scores, sources


def aggregate_directory(directory: str | os.PathLike) -> AggregateResult:
    """``aggregate`` of everything ``collect_eval_results`` finds in ``directory``."""
    scores, sources = collect_eval_results(directory)
    return aggregate(scores, sources=sources)
