"""The mini world: a deterministic procedural text-to-video world (see ``shared/spec/miniworld.md``).

Every value here is fixed by the spec; MiniBench and its tests depend on them.
A sample is a uint8 video (8, 32, 32, 3), its caption and its attributes. Sample ``i`` of a
stream seeded ``seed`` is a pure function of ``(seed, i, split)``, so any sample can be rebuilt.
"""

from __future__ import annotations

import csv
import itertools
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from t2v_turbo.video_io import write_mp4

NUM_FRAMES = 8
HEIGHT = WIDTH = 32
FPS = 8
NOISE_SIGMA = 3.0
SUPERSAMPLE = 4

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "teal": (20, 110, 110),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
RADIUS_RANGE = (5.0, 7.0)
SPEED_RANGE = (1.2, 1.8)
#: (colour, shape) pairs that no training split of any model ever contains
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})
#: unit direction (dx, dy) of each motion; image y grows downward
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
#: seed of the choice of the 45 seen captions of the evaluation prompt set
EVAL_PROMPT_SEED = 0
NUM_EVAL_SEEN = 45


@dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    motion: str
    background: str

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT_PAIRS


@dataclass(frozen=True)
class Sample:
    video: np.ndarray  # uint8 (T, H, W, 3)
    caption: str
    attributes: Attributes
    radius: float
    speed: float
    start: tuple[float, float]  # object centre (x, y) in frame 0, pixels


# ---- captions ------------------------------------------------------------------------
def caption_of(attrs: Attributes, with_motion: bool = True) -> str:
    """The caption of ``attrs``; ``with_motion=False`` drops the motion phrase (image reward text)."""
    if not with_motion:
        return f"a {attrs.colour} {attrs.shape} on a {attrs.background} background"
    if attrs.motion == "still":
        return f"a {attrs.colour} {attrs.shape} staying still on a {attrs.background} background"
    return f"a {attrs.colour} {attrs.shape} moving {attrs.motion} on a {attrs.background} background"


def strip_motion(caption: str) -> str:
    """Caption without its motion phrase: ``a red circle moving left on ...`` -> ``a red circle on ...``."""
    return caption_of(parse_caption(caption), with_motion=False)


def time_reversed_caption(caption: str) -> str:
    """The caption of the video played backwards: left <-> right, up <-> down, still stays. Time reversal is a
    symmetry of the world: a reversed clip has the same colour, shape and background, i.i.d. background noise, and
    a start inside the range its reversed motion allows, so it is as likely under that caption as any other."""
    attrs = parse_caption(caption)
    dx, dy = DIRECTIONS[attrs.motion]
    reversed_motion = next(m for m, d in DIRECTIONS.items() if d == (-dx, -dy))
    return caption_of(replace(attrs, motion=reversed_motion))


def parse_caption(caption: str) -> Attributes:
    """Attributes of a full caption; raises ``ValueError`` naming the caption if it is not one of the world's."""
    words = caption.strip().lower().split()
    try:
        if words[0] != "a":
            raise IndexError
        colour, shape = words[1], words[2]
        if words[3] == "moving":
            motion, rest = words[4], words[5:]
        elif words[3:5] == ["staying", "still"]:
            motion, rest = "still", words[5:]
        else:
            raise IndexError
        if len(rest) != 4 or rest[0] != "on" or rest[1] != "a" or rest[3] != "background":
            raise IndexError
        background = rest[2]
    except IndexError:
        raise ValueError(f"not a mini-world caption: {caption!r}") from None
    attrs = Attributes(colour, shape, motion, background)
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS or background not in BACKGROUNDS:
        raise ValueError(f"not a mini-world caption (unknown word): {caption!r}")
    if motion == "still" and words[3] == "moving":
        raise ValueError(f"not a mini-world caption: {caption!r}")
    return attrs


def all_attributes() -> list[Attributes]:
    """All 270 compositions in a fixed order (colour, shape, motion, background)."""
    return [Attributes(c, s, m, b) for c, s, m, b in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)]


def all_captions() -> list[str]:
    return [caption_of(a) for a in all_attributes()]


def train_attributes() -> list[Attributes]:
    """The 225 compositions training data may contain (held-out pairs excluded)."""
    return [a for a in all_attributes() if not a.held_out]


def held_out_captions() -> list[str]:
    return [caption_of(a) for a in all_attributes() if a.held_out]


def evaluation_prompts() -> list[str]:
    """The evaluation prompt set: the 45 held-out captions, then 45 seen captions chosen with a fixed seed."""
    seen = [caption_of(a) for a in train_attributes()]
    chosen = random.Random(EVAL_PROMPT_SEED).sample(seen, NUM_EVAL_SEEN)
    return held_out_captions() + sorted(chosen)


def world_vocabulary() -> list[str]:
    """Every word a caption (with or without motion) can contain, in a fixed order."""
    words = ["a", "on", "background", "moving", "staying", "still"]
    words += list(COLOURS) + list(SHAPES) + [m for m in MOTIONS if m != "still"] + list(BACKGROUNDS)
    return list(dict.fromkeys(words))


# ---- rendering -----------------------------------------------------------------------
def _coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage (H, W) in [0, 1]: supersample 4x, then box-downsample."""
    s = SUPERSAMPLE
    # sub-pixel centres in pixel units
    coords = (np.arange(WIDTH * s) + 0.5) / s
    x = coords[None, :]
    y = coords[:, None]
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "triangle":
        # apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r): half-width grows from 0 to r
        frac = (y - (cy - r)) / (2 * r)
        inside = (frac >= 0) & (frac <= 1) & (np.abs(x - cx) <= frac * r)
    else:
        raise ValueError(f"unknown shape {shape!r} (known: {SHAPES})")
    return inside.reshape(HEIGHT, s, WIDTH, s).mean(axis=(1, 3))


def render(attrs: Attributes, radius: float, speed: float, start: tuple[float, float], rng: np.random.Generator,
           object_rgb: Sequence[float] | None = None) -> np.ndarray:
    """uint8 video (T, H, W, 3) of one object moving at ``speed`` px/frame from centre ``start``; ``object_rgb``
    paints the object in a colour outside the palette instead of ``attrs.colour`` (VAE training clips only)."""
    bg = np.asarray(BACKGROUNDS[attrs.background], dtype=np.float64)
    fg = np.asarray(COLOURS[attrs.colour] if object_rgb is None else object_rgb, dtype=np.float64)
    dx, dy = DIRECTIONS[attrs.motion]
    frames = []
    for t in range(NUM_FRAMES):
        noise = rng.normal(0.0, NOISE_SIGMA, size=(HEIGHT, WIDTH, 3))
        background = np.clip(bg + noise, 0, 255)
        cov = _coverage(attrs.shape, start[0] + dx * speed * t, start[1] + dy * speed * t, radius)[..., None]
        frame = background * (1 - cov) + fg * cov
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def make_sample(attrs: Attributes, rng: np.random.Generator, object_rgb: Sequence[float] | None = None) -> Sample:
    """Draw radius, speed and a start position that keeps the object inside all frames, then render
    (``object_rgb``: see ``render``)."""
    r = float(rng.uniform(*RADIUS_RANGE))
    speed = float(rng.uniform(*SPEED_RANGE)) if attrs.motion != "still" else 0.0
    dx, dy = DIRECTIONS[attrs.motion]
    travel = speed * (NUM_FRAMES - 1)

    def axis_start(d: int, size: int) -> float:
        lo, hi = r, size - r  # allowed centre range in every frame
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        return float(rng.uniform(lo, hi))

    start = (axis_start(dx, WIDTH), axis_start(dy, HEIGHT))
    video = render(attrs, r, speed, start, rng, object_rgb)
    return Sample(video, caption_of(attrs), attrs, r, speed, start)


def sample_at(index: int, seed: int = 0, split: str = "train") -> Sample:
    """Sample ``index`` of the stream ``(seed, split)``; a pure function of its arguments.

    ``split="train"`` draws among the 225 training compositions (never a held-out pair),
    ``split="all"`` among all 270, ``split="held_out"`` among the 45 held-out ones.
    """
    pools = {
        "train": train_attributes(),
        "all": all_attributes(),
        "held_out": [a for a in all_attributes() if a.held_out],
    }
    if split not in pools:
        raise ValueError(f"unknown split {split!r} (known: {sorted(pools)})")
    pool = pools[split]
    rng = np.random.default_rng([seed, index, sorted(pools).index(split)])
    attrs = pool[int(rng.integers(len(pool)))]
    return make_sample(attrs, rng)


def caption_draws(caption: str, seed: int = 0, index: int = 0) -> np.random.Generator:
    """The random draws (radius, speed, start, noise) of ``sample_for_caption(caption, seed, index)``; another
    composition rendered from them keeps the object's size, speed, path and background noise."""
    return np.random.default_rng([seed, index, 7919, all_captions().index(caption_of(parse_caption(caption)))])


def sample_for_caption(caption: str, seed: int = 0, index: int = 0) -> Sample:
    """A ground-truth video of ``caption`` (reproducible from ``seed``, ``index``)."""
    return make_sample(parse_caption(caption), caption_draws(caption, seed, index))


def stream(seed: int = 0, split: str = "train", start: int = 0) -> Iterator[Sample]:
    """Infinite deterministic stream of samples ``start, start + 1, ...``."""
    for i in itertools.count(start):
        yield sample_at(i, seed, split)


def batch(indices: Sequence[int], seed: int = 0, split: str = "train") -> tuple[np.ndarray, list[str], list[Attributes]]:
    """uint8 videos (B, T, H, W, 3), captions and attributes of the given stream indices."""
    samples = [sample_at(i, seed, split) for i in indices]
    return np.stack([s.video for s in samples]), [s.caption for s in samples], [s.attributes for s in samples]


def to_pixels(videos: np.ndarray):
    """uint8 (B, T, H, W, 3) -> float tensor (B, 3, T, H, W) in [-1, 1] (the project's pixel contract)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


# ---- files ---------------------------------------------------------------------------
def write_dataset(folder: str | Path, num_videos: int, seed: int = 0, split: str = "train", csv_name: str = "data.csv", progress: bool = True) -> Path:
    """Write ``num_videos`` samples as mp4 + a CSV (columns ``video``, ``caption``; paths relative to the CSV)."""
    from tqdm import tqdm

    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    csv_path = folder / csv_name
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        for i in tqdm(range(num_videos), desc=f"miniworld {split} videos", disable=not progress):
            sample = sample_at(i, seed, split)
            rel = f"videos/{split}_{seed}_{i:06d}.mp4"
            write_mp4(folder / rel, sample.video, fps=FPS, lossless=True)
            writer.writerow([rel, sample.caption])
    return csv_path


def attributes_dict(attrs: Attributes) -> dict:
    return asdict(attrs)
