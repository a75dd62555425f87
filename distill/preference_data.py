"""Preference pairs from a CSV: (prompt, video A, video B, one label per dimension).

Columns: ``prompt``, ``video_a``, ``video_b`` (paths relative to the CSV, absolute kept), one label
column per dimension (``A``, ``B`` or ``tie``), optionally ``Overall`` (the overall preference) and
``{dim}_a`` / ``{dim}_b`` (each video's absolute score, needed by the regression loss). Every label is
checked when the CSV is read, so a bad row is named before any model loads.

A sample is ``{"pixels_a", "pixels_b": (C, T, H, W) in [-1, 1], "prompt": str, "labels": (D,) long
(+1 A, -1 B, 0 tie), "overall": long (or absent), "scores_a", "scores_b": (D,) float (or absent),
"index": int, "skipped": [names]}``. Videos are decoded with the distillation data's decoder
(``distill.data.decode_clip``: ``num_frames`` at ``fps`` from the start, short-side resize and centre
crop); a pair whose video cannot be decoded is skipped with a warning, counted, and the next pair is
returned instead (as ``distill.data.VideoCaptionDataset`` does).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from distill.data import VideoDecodeError, decode_clip, frames_to_pixels
from rewards.preference import label_code

logger = logging.getLogger(__name__)

OVERALL = "Overall"


class PreferencePairsCSV(torch.utils.data.Dataset):
    """Preference pairs of a CSV (module docstring); ``dimensions`` are the label columns to read."""

    def __init__(self, csv_path: str | Path, dimensions: Sequence[str] = ("VQ", "MQ", "TA"), num_frames: int = 16,
                 fps: float = 8, height: int = 256, width: int = 256, max_skips: int = 100, cache: bool = False):
        path = Path(csv_path)
        if not path.is_file():
            raise FileNotFoundError(f"preference CSV not found: {path}")
        self.root, self.dimensions = path.parent, tuple(dimensions)
        self.num_frames, self.fps, self.height, self.width = num_frames, fps, height, width
        self.max_skips, self.cache = max_skips, cache
        self._decoded: dict[str, torch.Tensor] = {}
        self.skipped = 0
        self.skip_reasons: Counter = Counter()
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            missing = sorted({"prompt", "video_a", "video_b", *self.dimensions} - columns)
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
            self.has_overall = OVERALL in columns
            self.has_scores = all(f"{d}_{s}" in columns for d in self.dimensions for s in "ab")
            self.rows = []
            for number, row in enumerate(reader, start=2):
                where = f"{path} line {number}"
                item = {"prompt": row["prompt"], "video_a": row["video_a"], "video_b": row["video_b"],
                        "labels": [label_code(row[d], f"{where}, column {d}") for d in self.dimensions]}
                if self.has_overall:
                    item["overall"] = label_code(row[OVERALL], f"{where}, column {OVERALL}")
                if self.has_scores:
                    try:
                        item["scores"] = [[float(row[f"{d}_{s}"]) for d in self.dimensions] for s in "ab"]
                    except ValueError as err:
                        raise ValueError(f"{where}: a score column is not a number ({err})") from None
                self.rows.append(item)
        if not self.rows:
            raise ValueError(f"{path}: no rows")
        self.path = path

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Clips always start at frame 0: nothing depends on the epoch."""

    def pixels(self, name: str) -> torch.Tensor:
        if name in self._decoded:
            return self._decoded[name]
        path = Path(name) if Path(name).is_absolute() else self.root / name
        frames = decode_clip(str(path), self.num_frames, self.fps, random_start=False)
        pixels = frames_to_pixels(frames, self.height, self.width)
        if self.cache:
            self._decoded[name] = pixels
        return pixels

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        for attempt in range(min(self.max_skips, len(self)) + 1):
            current = (index + attempt) % len(self)
            row = self.rows[current]
            try:
                pixels = [self.pixels(row["video_a"]), self.pixels(row["video_b"])]
            except (VideoDecodeError, OSError) as err:
                self.skipped += 1
                self.skip_reasons[str(err).split(":")[0]] += 1
                skipped.append(f"{row['video_a']} | {row['video_b']}")
                logger.warning("skipping pair %d of %s: %s", current, self.path, err)
                continue
            sample = {"pixels_a": pixels[0], "pixels_b": pixels[1], "prompt": row["prompt"],
                      "labels": torch.tensor(row["labels"]), "index": current, "skipped": skipped}
            if self.has_overall:
                sample["overall"] = torch.tensor(row["overall"])
            if self.has_scores:
                sample["scores_a"], sample["scores_b"] = (torch.tensor(s) for s in row["scores"])
            return sample
        raise RuntimeError(f"{self.path}: {len(skipped)} pairs in a row could not be decoded, starting at row {index}")


def collate_pairs(samples: list[dict]) -> dict:
    """Stack the tensors of a list of pair samples; keep prompts, indices, positions and skipped names as lists."""
    batch = {"prompts": [s["prompt"] for s in samples], "indices": [s["index"] for s in samples],
             "skipped": [name for s in samples for name in s["skipped"]]}
    for key in ("pixels_a", "pixels_b", "labels", "overall", "scores_a", "scores_b"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if all("position" in s for s in samples):
        batch["positions"] = [s["position"] for s in samples]
    return batch


class PreferencePairs(torch.utils.data.Dataset):
    """The pairs of a preference CSV as (preferred, rejected) clips by one label column, for DPO.

    ``preferred`` names the column that decides (a dimension such as ``TA``, or ``Overall``); pairs it labels
    a tie carry no preference and are left out when the CSV is read (listed in ``invalid_items``, counted in
    the run's skip report). A sample is ``{"pixels": preferred (C, T, H, W), "pixels_loser": rejected,
    "caption", "index", "skipped"}``; the other arguments are ``PreferencePairsCSV``'s.
    """

    has_videos = True
    has_pairs = True

    def __init__(self, csv_path: str | Path, preferred: str = "TA", **kwargs):
        self.pairs = PreferencePairsCSV(csv_path, dimensions=(preferred,) if preferred != OVERALL else (), **kwargs)
        if preferred == OVERALL and not self.pairs.has_overall:
            raise ValueError(f"{self.pairs.path}: preferred={OVERALL!r} but the CSV has no {OVERALL} column")
        column = "overall" if preferred == OVERALL else "labels"
        code = (lambda row: row[column]) if preferred == OVERALL else (lambda row: row[column][0])
        self.items = [i for i, row in enumerate(self.pairs.rows) if code(row) != 0]
        self.winner_is_a = [code(self.pairs.rows[i]) > 0 for i in self.items]
        self.invalid_items = [(f"{self.pairs.path} row {i + 2}", f"a tie on {preferred}")
                              for i, row in enumerate(self.pairs.rows) if code(row) == 0]
        if self.invalid_items:
            logger.warning("%s: %d of %d pairs are ties on %s and are left out", self.pairs.path,
                           len(self.invalid_items), len(self.pairs), preferred)
        if not self.items:
            raise ValueError(f"{self.pairs.path}: every pair is a tie on {preferred}; no preference to learn")
        self.preferred = preferred
        self.num_frames, self.fps = self.pairs.num_frames, self.pairs.fps
        self.height, self.width = self.pairs.height, self.pairs.width

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Clips always start at frame 0: nothing depends on the epoch."""

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        for attempt in range(min(self.pairs.max_skips, len(self)) + 1):
            current = (index + attempt) % len(self)
            row = self.pairs.rows[self.items[current]]
            winner, loser = ("video_a", "video_b") if self.winner_is_a[current] else ("video_b", "video_a")
            try:
                pixels = self.pairs.pixels(row[winner]), self.pairs.pixels(row[loser])
            except (VideoDecodeError, OSError) as err:
                self.pairs.skipped += 1
                skipped.append(f"{row['video_a']} | {row['video_b']}")
                logger.warning("skipping pair row %d of %s: %s", self.items[current] + 2, self.pairs.path, err)
                continue
            return {"pixels": pixels[0], "pixels_loser": pixels[1], "caption": row["prompt"], "index": current,
                    "skipped": skipped}
        raise RuntimeError(f"{self.pairs.path}: {len(skipped)} pairs in a row could not be decoded")
