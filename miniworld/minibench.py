"""MiniBench: the mini world's ground-truth benchmark (no learned model; see ``shared/spec/miniworld.md``).

Each video (uint8 (T, H, W, 3)) is judged against the attributes parsed from its prompt on six
dimensions: background, colour, shape, motion, single object, temporal consistency. Total is
their mean. Results are reported per dimension, overall and split into seen / held-out prompts.
Videos that cannot be read (or whose name is not a mini-world prompt) are listed in the report
under ``unreadable``, never dropped silently.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from miniworld.world import BACKGROUNDS, COLOURS, parse_caption
from t2v_turbo.video_io import read_video, to_uint8_videos

DIMENSIONS = ("background", "colour", "shape", "motion", "single_object", "temporal_consistency")
MASK_THRESHOLD = 60.0
FILL_RATIOS = {"circle": 0.785, "square": 1.0, "triangle": 0.5}
STILL_THRESHOLD = 3.0
MIN_COMPONENT = 4
_NAME = re.compile(r"^(?P<prompt>.+)-(?P<index>\d+)$")


def _nearest(value: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = [np.linalg.norm(value - np.asarray(palette[n], dtype=np.float64)) for n in names]
    return names[int(np.argmin(dist))]


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of a boolean (H, W) mask."""
    seen = np.zeros_like(mask, dtype=bool)
    sizes = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        sizes.append(size)
    return sizes


def analyse_video(video: np.ndarray) -> dict:
    """What MiniBench sees in a video: background/colour names, fill ratio, motion, masks' statistics."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video (T, H, W, 3), got shape {video.shape}")
    v = video.astype(np.float64)
    border = np.concatenate([v[:, 0, :, :], v[:, -1, :, :], v[:, 1:-1, 0, :], v[:, 1:-1, -1, :]], axis=1).reshape(-1, 3)
    bg_est = np.median(border, axis=0)
    masks = np.linalg.norm(v - bg_est, axis=-1) > MASK_THRESHOLD  # (T, H, W)
    areas = masks.reshape(masks.shape[0], -1).sum(1).astype(np.float64)
    out = {"background": _nearest(bg_est, BACKGROUNDS), "areas": areas.tolist()}
    out["colour"] = _nearest(np.median(v[masks], axis=0), COLOURS) if masks.any() else None
    mid = masks[masks.shape[0] // 2]
    if mid.any():
        ys, xs = np.nonzero(mid)
        bbox = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill = mid.sum() / bbox
        out["fill_ratio"] = float(fill)
        out["shape"] = min(FILL_RATIOS, key=lambda s: abs(FILL_RATIOS[s] - fill))
    else:
        out["fill_ratio"], out["shape"] = None, None
    if masks[0].any() and masks[-1].any():
        def centroid(m):
            ys, xs = np.nonzero(m)
            return np.array([xs.mean(), ys.mean()])

        d = centroid(masks[-1]) - centroid(masks[0])
        out["displacement"] = d.tolist()
        if np.linalg.norm(d) < STILL_THRESHOLD:
            out["motion"] = "still"
        elif abs(d[0]) >= abs(d[1]):
            out["motion"] = "right" if d[0] > 0 else "left"
        else:
            out["motion"] = "down" if d[1] > 0 else "up"
    else:
        out["displacement"], out["motion"] = None, None
    out["single_object"] = float(np.mean([sum(s >= MIN_COMPONENT for s in _components(m)) == 1 for m in masks]))
    if (areas == 0).any():
        out["temporal_consistency"] = 0.0
    else:
        out["temporal_consistency"] = float(1.0 - min(1.0, areas.std() / areas.mean()))
    return out


def score_video(video: np.ndarray, prompt: str) -> dict[str, float]:
    """The six MiniBench scores (each in [0, 1]) of one video against its prompt, plus ``total``."""
    attrs = parse_caption(prompt)
    seen = analyse_video(video)
    scores = {
        "background": float(seen["background"] == attrs.background),
        "colour": float(seen["colour"] == attrs.colour),
        "shape": float(seen["shape"] == attrs.shape),
        "motion": float(seen["motion"] == attrs.motion),
        "single_object": seen["single_object"],
        "temporal_consistency": seen["temporal_consistency"],
    }
    scores["total"] = float(np.mean([scores[d] for d in DIMENSIONS]))
    return scores


def _summarise(rows: list[dict]) -> dict:
    keys = DIMENSIONS + ("total",)
    out = {"count": len(rows)}
    for k in keys:
        out[k] = float(np.mean([r[k] for r in rows])) if rows else None
    return out


def evaluate(videos, prompts: Sequence[str], unreadable: Iterable[dict] = (), names: Sequence[str] | None = None) -> dict:
    """Score videos against prompts; returns the report dict (overall, seen, held_out, per video)."""
    videos = to_uint8_videos(videos)
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts")
    rows, bad = [], list(unreadable)
    for i, (video, prompt) in enumerate(zip(videos, prompts)):
        name = names[i] if names is not None else str(i)
        try:
            attrs = parse_caption(prompt)
            scores = score_video(video, prompt)
        except ValueError as err:
            bad.append({"video": name, "error": str(err)})
            continue
        rows.append({"video": name, "prompt": prompt, "held_out": attrs.held_out, **scores})
    return {
        "dimensions": list(DIMENSIONS),
        "overall": _summarise(rows),
        "seen": _summarise([r for r in rows if not r["held_out"]]),
        "held_out": _summarise([r for r in rows if r["held_out"]]),
        "unreadable": bad,
        "videos": rows,
    }


def evaluate_folder(folder: str | Path) -> dict:
    """Score every ``{prompt}-{i}.mp4`` (or .gif) in ``folder``; unreadable or misnamed files are reported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MiniBench: no video folder at {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".gif", ".webm", ".avi"))
    videos, prompts, names, bad = [], [], [], []
    for path in files:
        match = _NAME.match(path.stem)
        if match is None:
            bad.append({"video": str(path), "error": "file name is not '{prompt}-{i}'"})
            continue
        try:
            video = read_video(path)
            parse_caption(match["prompt"])
        except ValueError as err:
            bad.append({"video": str(path), "error": str(err)})
            continue
        videos.append(video)
        prompts.append(match["prompt"])
        names.append(str(path))
    if not files:
        raise FileNotFoundError(f"MiniBench: no video files (*.mp4, *.gif) in {folder}")
    report = evaluate(videos, prompts, unreadable=bad, names=names)
    report["folder"] = str(folder)
    return report


def to_markdown(report: dict, title: str = "MiniBench") -> str:
    """A per-dimension table (overall / seen / held-out) plus the unreadable videos."""
    cols = list(DIMENSIONS) + ["total"]
    lines = [f"### {title}", "", "| split | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for split in ("overall", "seen", "held_out"):
        s = report[split]
        vals = [("-" if s[c] is None else f"{s[c]:.3f}") for c in cols]
        lines.append(f"| {split} | {s['count']} | " + " | ".join(vals) + " |")
    if report.get("unreadable"):
        lines += ["", f"**{len(report['unreadable'])} video(s) could not be scored:**", ""]
        lines += [f"- `{b['video']}`: {b['error']}" for b in report["unreadable"]]
    return "\n".join(lines) + "\n"


def table_row(name: str, report: dict) -> str:
    """One Markdown row: name, the six dimensions + total overall, then total seen / held-out."""
    o = report["overall"]
    vals = [f"{o[c]:.3f}" for c in list(DIMENSIONS) + ["total"]]
    seen, held = report["seen"]["total"], report["held_out"]["total"]
    vals += ["-" if seen is None else f"{seen:.3f}", "-" if held is None else f"{held:.3f}"]
    return f"| {name} | " + " | ".join(vals) + " |"


TABLE_HEADER = (
    "| model | " + " | ".join(list(DIMENSIONS) + ["total"]) + " | total seen | total held-out |\n"
    + "|---|" + "---|" * (len(DIMENSIONS) + 3)
)


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the Markdown next to it (same stem, ``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    md = out.with_suffix(".md")
    md.write_text(to_markdown(report))
    return out, md


def ground_truth_report(prompts: Sequence[str] | None = None, videos_per_prompt: int = 1, seed: int = 0) -> dict:
    """MiniBench of the world's own videos (the ceiling) on the evaluation prompt set."""
    from miniworld.world import evaluation_prompts, sample_for_caption

    prompts = list(prompts or evaluation_prompts())
    all_prompts = [p for p in prompts for _ in range(videos_per_prompt)]
    videos = [sample_for_caption(p, seed=seed, index=i % videos_per_prompt).video for i, p in enumerate(all_prompts)]
    return evaluate(videos, all_prompts)
