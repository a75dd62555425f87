"""Mini-world preference pairs whose labels come from ground truth (VideoAlign's three dimensions).

Each pair is one training-split caption and two videos rendered for it, each with defects drawn
independently. A video's ground-truth level per dimension counts the defects it does not have:

- **TA** (text alignment), 0..3: the object's colour, its shape and the background match the caption;
- **MQ** (motion quality), 0..2: the object moves as the caption says; its size is steady over time
  (a *size jitter* defect rescales it in every frame, which MiniBench's temporal consistency sees);
- **VQ** (visual quality), 0..2: a single object (an *extra object* defect adds a second, smaller one
  of another colour); sharp (a *blur* defect blurs every frame with a Gaussian of sigma ``BLUR_SIGMA``).

The label of a dimension is ``A`` or ``B`` for the video with the higher level and ``tie`` when the
levels agree; ``Overall`` compares the summed levels. Levels are written as ``{dim}_a`` / ``{dim}_b``
(the absolute scores the regression loss fits). Every video is a pure function of (seed, pair index,
side), like the world's own samples.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from miniworld import world

DIMENSIONS = ("VQ", "MQ", "TA")
#: probability of each defect, drawn independently per video
DEFECT_RATES = {"colour": 0.3, "shape": 0.3, "background": 0.3, "motion": 0.35, "size_jitter": 0.35,
                "extra_object": 0.35, "blur": 0.35}
BLUR_SIGMA = 1.2
SIZE_JITTER = (0.55, 1.35)
EXTRA_RADIUS = (3.0, 4.0)


@dataclass(frozen=True)
class RenderedVideo:
    video: np.ndarray  # uint8 (T, H, W, 3)
    defects: tuple[str, ...]
    levels: dict[str, int]


def levels_of(defects: set[str]) -> dict[str, int]:
    """Ground-truth level per dimension: the number of its defects the video does not have."""
    return {
        "TA": 3 - len(defects & {"colour", "shape", "background"}),
        "MQ": 2 - len(defects & {"motion", "size_jitter"}),
        "VQ": 2 - len(defects & {"extra_object", "blur"}),
    }


def _other(value: str, choices, rng: np.random.Generator) -> str:
    options = [c for c in choices if c != value]
    return options[int(rng.integers(len(options)))]


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of float frames (T, H, W, 3), edges replicated."""
    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        padded = np.pad(frames, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        frames = sum(w * np.take(padded, np.arange(i, i + frames.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return frames


def render_with_defects(attrs: world.Attributes, defects: set[str], rng: np.random.Generator) -> np.ndarray:
    """uint8 video (T, H, W, 3) of ``attrs`` with ``defects`` applied (the world's renderer otherwise)."""
    shown = world.Attributes(
        colour=_other(attrs.colour, world.COLOURS, rng) if "colour" in defects else attrs.colour,
        shape=_other(attrs.shape, world.SHAPES, rng) if "shape" in defects else attrs.shape,
        motion=_other(attrs.motion, world.MOTIONS, rng) if "motion" in defects else attrs.motion,
        background=_other(attrs.background, world.BACKGROUNDS, rng) if "background" in defects else attrs.background,
    )
    sample = world.make_sample(shown, rng)
    bg = np.asarray(world.BACKGROUNDS[shown.background], dtype=np.float64)
    fg = np.asarray(world.COLOURS[shown.colour], dtype=np.float64)
    dx, dy = world.DIRECTIONS[shown.motion]
    scales = rng.uniform(*SIZE_JITTER, size=world.NUM_FRAMES) if "size_jitter" in defects else np.ones(world.NUM_FRAMES)
    extra = None
    if "extra_object" in defects:
        radius = float(rng.uniform(*EXTRA_RADIUS))
        extra = (_other(shown.colour, world.COLOURS, rng), world.SHAPES[int(rng.integers(3))], radius,
                 float(rng.uniform(radius, world.WIDTH - radius)), float(rng.uniform(radius, world.HEIGHT - radius)))
    frames = []
    for t in range(world.NUM_FRAMES):
        frame = np.clip(bg + rng.normal(0.0, world.NOISE_SIGMA, size=(world.HEIGHT, world.WIDTH, 3)), 0, 255)
        if extra is not None:
            colour, shape, radius, x, y = extra
            cov = world._coverage(shape, x, y, radius)[..., None]
            frame = frame * (1 - cov) + np.asarray(world.COLOURS[colour], dtype=np.float64) * cov
        cx, cy = sample.start[0] + dx * sample.speed * t, sample.start[1] + dy * sample.speed * t
        cov = world._coverage(shown.shape, cx, cy, sample.radius * scales[t])[..., None]
        frames.append(frame * (1 - cov) + fg * cov)
    video = np.stack(frames)
    if "blur" in defects:
        video = _gaussian_blur(video, BLUR_SIGMA)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def render_video(attrs: world.Attributes, rng: np.random.Generator) -> RenderedVideo:
    defects = {name for name, rate in DEFECT_RATES.items() if rng.random() < rate}
    return RenderedVideo(render_with_defects(attrs, defects, rng), tuple(sorted(defects)), levels_of(defects))


def label(level_a: int, level_b: int) -> str:
    return "A" if level_a > level_b else "B" if level_b > level_a else "tie"


def pair_at(index: int, seed: int = 0, split: str = "train") -> tuple[str, RenderedVideo, RenderedVideo]:
    """(caption, video A, video B) of pair ``index``: a caption of ``split`` and two independent renderings."""
    caption = world.sample_at(index, seed, split).caption
    attrs = world.parse_caption(caption)
    a = render_video(attrs, np.random.default_rng([seed, index, 0, 4099]))
    b = render_video(attrs, np.random.default_rng([seed, index, 1, 4099]))
    return caption, a, b


def write_pairs(folder: str | Path, num_pairs: int, seed: int = 0, split: str = "train", csv_name: str = "pairs.csv",
                progress: bool = True) -> Path:
    """Write ``num_pairs`` pairs as lossless mp4s + a preference CSV: ``prompt``, ``video_a``, ``video_b``
    (relative to the CSV), a label column per dimension and ``Overall``, the levels ``{dim}_a`` / ``{dim}_b``
    and the defects of each video."""
    from tqdm import tqdm

    from t2v_turbo.video_io import write_mp4

    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    path = folder / csv_name
    columns = ["prompt", "video_a", "video_b", *DIMENSIONS, "Overall"]
    columns += [f"{d}_{side}" for d in DIMENSIONS for side in "ab"] + ["defects_a", "defects_b"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for i in tqdm(range(num_pairs), desc=f"mini-world preference pairs ({split})", disable=not progress):
            caption, a, b = pair_at(i, seed, split)
            row = {"prompt": caption, "Overall": label(sum(a.levels.values()), sum(b.levels.values())),
                   "defects_a": " ".join(a.defects), "defects_b": " ".join(b.defects)}
            for side, video in (("a", a), ("b", b)):
                rel = f"videos/{split}_{seed}_{i:06d}_{side}.mp4"
                write_mp4(folder / rel, video.video, fps=world.FPS, lossless=True)
                row[f"video_{side}"] = rel
                row.update({f"{d}_{side}": video.levels[d] for d in DIMENSIONS})
            row.update({d: label(a.levels[d], b.levels[d]) for d in DIMENSIONS})
            writer.writerow(row)
    return path


def pairs_csv(folder: str | Path = "runs/miniworld-preferences", num_pairs: int = 3000, seed: int = 0,
              split: str = "train") -> Path:
    """The CSV of ``num_pairs`` pairs of (seed, split) under ``folder``, written once (reused when present)."""
    folder = Path(folder)
    path = folder / f"{split}_seed{seed}_n{num_pairs}.csv"
    if not path.is_file():
        write_pairs(folder, num_pairs, seed=seed, split=split, csv_name=path.name + ".tmp")
        (folder / (path.name + ".tmp")).rename(path)
    return path


#: how the recipes read the world's clips: all 8 frames of 32x32 at 8 fps
CLIP_GEOMETRY = {"num_frames": world.NUM_FRAMES, "fps": world.FPS, "height": world.HEIGHT, "width": world.WIDTH}


def preference_pairs(folder: str | Path = "runs/miniworld-preferences", num_pairs: int = 3000, seed: int = 0,
                     split: str = "train", cache: bool = True, **kwargs):
    """The pairs as the reward-model recipe reads them (``distill.preference_data.PreferencePairsCSV``; decoded
    clips kept in memory with ``cache``)."""
    from distill.preference_data import PreferencePairsCSV

    defaults = dict(dimensions=DIMENSIONS, cache=cache, **CLIP_GEOMETRY)
    return PreferencePairsCSV(pairs_csv(folder, num_pairs, seed, split), **{**defaults, **kwargs})


def dpo_pairs(folder: str | Path = "runs/miniworld-preferences", num_pairs: int = 3000, seed: int = 0,
              preferred: str = "TA", cache: bool = True):
    """(preferred, rejected) clips by the ``preferred`` dimension's ground truth, for DPO
    (``distill.preference_data.PreferencePairs``; ties left out)."""
    from distill.preference_data import PreferencePairs

    return PreferencePairs(pairs_csv(folder, num_pairs, seed), preferred=preferred, cache=cache, **CLIP_GEOMETRY)


def pair_videos(folder: str | Path = "runs/miniworld-preferences", num_pairs: int = 3000, seed: int = 0):
    """Every clip of the pairs (both sides, with their caption) as a ``distill.data.VideoCaptionCSV``: RWR's data,
    good and bad clips for its reward weights to tell apart."""
    from distill.data import VideoCaptionCSV

    source = pairs_csv(folder, num_pairs, seed)
    path = source.with_name(source.stem + "_videos.csv")
    if not path.is_file():
        with open(source, newline="", encoding="utf-8") as f:
            rows = [(r[f"video_{side}"], r["prompt"]) for r in csv.DictReader(f) for side in "ab"]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "caption"])
            writer.writerows(rows)
        tmp.rename(path)
    return VideoCaptionCSV(csv=path, random_start=False, seed=seed, **CLIP_GEOMETRY)
