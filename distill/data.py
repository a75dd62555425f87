"""Training datasets: video-caption datasets decoded with PyAV, and prompt lists.

Three sources share one decoding path (``VideoCaptionDataset``):

- ``VideoCaptionCSV(csv, ...)``: a CSV with ``video`` and ``caption`` columns; video paths are
  relative to the CSV's folder (absolute paths are kept).
- ``VideoCaptionFolder(folder, ...)``: ``name.mp4`` next to ``name.txt`` (the caption).
- ``VideoCaptionShards(shards, ...)``: webdataset-style tar files holding ``key.mp4`` +
  ``key.txt`` pairs, read with ``tarfile`` (no webdataset dependency).

``PromptDataset`` holds prompts only, for objectives that sample their own videos.

A video sample is ``{"pixels": (C, T, H, W) float in [-1, 1], "caption": str, "index": int,
"skipped": [names]}``. Frames are taken at ``fps`` frames per second of video time (the
source frame nearest to each target time), ``num_frames`` of them, starting at a clip start
drawn from a generator seeded by (``seed``, index, epoch) so a sample is a pure function of
its position; the short side is resized to cover ``height`` x ``width`` (bilinear,
antialiased) and the centre is cropped.

Bad items never stop a run, and none is lost silently:

- items that cannot be used at all (a caption that is not valid UTF-8, an mp4 without a caption
  file or tar member, a CSV row without a video or caption cell) are left out when the dataset is
  read, each with a warning naming it and the reason, and listed in ``invalid_items``;
- corrupt, unreadable or too-short videos are found when decoded: the dataset warns naming the file
  and the reason, counts it in ``skipped`` / ``skip_reasons``, and returns a replacement drawn
  at random from a stream seeded by (``seed``, epoch, index) (the same for the same position on
  resume, and different for neighbouring bad items). The returned sample lists the names it
  skipped, so a trainer counts skips even when decoding happens in DataLoader workers.
"""

from __future__ import annotations

import csv as csv_module
import glob
import io
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


#: the last element of the seed of a replacement draw (keeps it apart from the clip-start stream)
REPLACEMENT_STREAM = 1


class VideoDecodeError(RuntimeError):
    """A video could not be turned into a clip (corrupt, unreadable or too short)."""


def decode_clip(
    source: str | Path | io.BytesIO,
    num_frames: int,
    fps: float,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """Decode ``num_frames`` frames at ``fps`` from a video: uint8 (T, H, W, 3).

    Target frame i sits at time start + i / fps; the source frame with the nearest
    presentation index is used. Raises ``VideoDecodeError`` when the file cannot be decoded
    or spans less than ``num_frames / fps`` seconds.
    """
    import av

    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except VideoDecodeError:
        raise
    except Exception as err:  # PyAV raises many error types for bad input (InvalidDataError, ...)
        raise VideoDecodeError(f"cannot decode: {type(err).__name__}: {err}") from err
    if not frames:
        raise VideoDecodeError("no decodable frames")
    source_fps = float(rate) if rate else fps
    step = source_fps / fps  # source frames per target frame
    span = (num_frames - 1) * step  # source-frame distance between first and last target frame
    last_start = len(frames) - 1 - span
    if last_start < -1e-6:
        raise VideoDecodeError(
            f"too short: {len(frames)} frames at {source_fps:g} fps, need {num_frames} frames at {fps:g} fps "
            f"({span + 1:.0f} source frames)"
        )
    start = 0.0
    if random_start and last_start > 0:
        start = float(torch.rand((), generator=generator)) * last_start
    picks = [min(len(frames) - 1, int(round(start + i * step))) for i in range(num_frames)]
    return torch.stack([torch.from_numpy(frames[i]) for i in picks])


def frames_to_pixels(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, height, width) in [-1, 1]: short-side resize, centre crop."""
    video = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, H, W)
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    video = video[:, :, top : top + height, left : left + width]
    return video.clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill ``self.items`` with (name, caption) and implement ``open``."""

    has_videos = True

    def __init__(
        self,
        num_frames: int = 16,
        fps: float = 8,
        height: int = 256,
        width: int = 256,
        random_start: bool = True,
        seed: int = 0,
        max_skips: int = 100,
    ):
        self.num_frames, self.fps, self.height, self.width = num_frames, fps, height, width
        self.random_start, self.seed, self.max_skips = random_start, seed, max_skips
        self.epoch = 0
        self.items: list[tuple[str, str]] = []
        #: number of videos skipped by this process (DataLoader workers keep their own copy)
        self.skipped = 0
        self.skip_reasons: Counter = Counter()
        #: (name, reason) of the items left out when the dataset was read
        self.invalid_items: list[tuple[str, str]] = []

    def _leave_out(self, name: str, reason: str) -> None:
        """Record an unusable item found while reading the dataset (named in a warning, counted by reason)."""
        self.invalid_items.append((name, reason))
        logger.warning("leaving out %s: %s", name, reason)

    def _report_invalid(self, source: str) -> None:
        if self.invalid_items:
            logger.warning("%s: %d item(s) left out (%s); %d usable", source, len(self.invalid_items),
                           count_reasons(self.invalid_items), len(self.items))

    def open(self, name: str) -> str | io.BytesIO:
        """A path or file object PyAV can open for item ``name``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Clip starts depend on the epoch, so each pass sees other clips of the same videos."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> torch.Tensor:
        """Pixels (C, T, H, W) of item ``index``; raises ``VideoDecodeError``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + index)
        name = self.items[index][0]
        try:
            source = self.open(name)
        except OSError as err:
            raise VideoDecodeError(f"cannot open: {err}") from err
        frames = decode_clip(source, self.num_frames, self.fps, generator, self.random_start)
        return frames_to_pixels(frames, self.height, self.width)

    def replacement_stream(self, index: int) -> torch.Generator:
        """The generator that draws replacements for item ``index`` in this epoch (its own stream)."""
        seed = np.random.SeedSequence([self.seed, self.epoch, index, REPLACEMENT_STREAM]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        current, stream = index, None
        for _ in range(min(self.max_skips, len(self)) + 1):
            name, caption = self.items[current]
            try:
                pixels = self.load(current)
            except VideoDecodeError as err:
                self.skipped += 1
                self.skip_reasons[str(err).split(":")[0]] += 1
                skipped.append(name)
                logger.warning("skipping video %s: %s", name, err)
                stream = stream or self.replacement_stream(index)
                current = int(torch.randint(len(self), (), generator=stream))
                continue
            return {"pixels": pixels, "caption": caption, "index": current, "skipped": skipped}
        raise RuntimeError(
            f"{type(self).__name__}: {len(skipped)} videos in a row could not be decoded, starting at "
            f"{self.items[index][0]} (last: {skipped[-1]}); check the dataset"
        )


class VideoCaptionCSV(VideoCaptionDataset):
    """Rows of a CSV with ``video`` (path relative to the CSV) and ``caption`` columns."""

    def __init__(self, csv: str | Path, video_column: str = "video", caption_column: str = "caption", **kwargs):
        super().__init__(**kwargs)
        csv_path = Path(csv)
        if not csv_path.is_file():
            raise FileNotFoundError(f"dataset CSV not found: {csv_path}")
        self.root = csv_path.parent
        # undecodable bytes become lone surrogates, so one bad row is named instead of failing the file
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv_module.DictReader(f)
            missing = {video_column, caption_column} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(
                    f"{csv_path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}"
                )
            for row in reader:
                where = f"{csv_path.name} line {reader.line_num}"
                video, caption = row[video_column], row[caption_column]
                if not video:
                    self._leave_out(where, f"no {video_column!r} cell")
                elif caption is None:
                    self._leave_out(f"{where} ({video})", f"no {caption_column!r} cell")
                elif not is_valid_text(video) or not is_valid_text(caption):
                    self._leave_out(f"{where} ({video!r})", "caption or path not valid UTF-8")
                else:
                    self.items.append((video, caption))
        self._report_invalid(str(csv_path))
        if not self.items:
            raise ValueError(f"{csv_path}: no usable rows")

    def open(self, name: str) -> str:
        return str(self.root / name)


class VideoCaptionFolder(VideoCaptionDataset):
    """``name.mp4`` + ``name.txt`` pairs in a folder (a video without a caption file is left out, named)."""

    def __init__(self, folder: str | Path, extension: str = ".mp4", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(folder)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        for video in sorted(self.root.glob(f"*{extension}")):
            caption_file = video.with_suffix(".txt")
            if not caption_file.is_file():
                self._leave_out(f"{video.name} ({caption_file.name})", "no caption file")
                continue
            caption = decode_caption(caption_file.read_bytes())
            if caption is None:
                self._leave_out(f"{video.name} ({caption_file.name})", "caption not valid UTF-8")
            else:
                self.items.append((video.name, caption))
        self._report_invalid(str(self.root))
        if not self.items:
            raise ValueError(f"{self.root}: no {extension} files with a matching .txt caption")

    def open(self, name: str) -> str:
        return str(self.root / name)


class VideoCaptionShards(VideoCaptionDataset):
    """Webdataset-style tar shards: members ``key.mp4`` and ``key.txt`` (names ``shard.tar:key.mp4``)."""

    def __init__(self, shards: str | Sequence[str], **kwargs):
        """``shards``: one tar path, a list of them, or a glob pattern (``/data/shard-*.tar``)."""
        super().__init__(**kwargs)
        if isinstance(shards, str) and any(c in shards for c in "*?["):
            paths = sorted(Path(p) for p in glob.glob(shards))
        else:
            paths = [Path(s) for s in ([shards] if isinstance(shards, (str, Path)) else shards)]
        if not paths:
            raise FileNotFoundError(f"no tar shards match {shards!r}")
        self.members: dict[str, tuple[Path, str]] = {}
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"tar shard not found: {path}")
            with tarfile.open(path) as tar:
                names = {m.name for m in tar.getmembers() if m.isfile()}
                for member in sorted(n for n in names if n.endswith(".mp4")):
                    key, caption_member = f"{path.name}:{member}", member[:-4] + ".txt"
                    if caption_member not in names:
                        self._leave_out(f"{key} ({caption_member})", "no caption file")
                        continue
                    caption = decode_caption(tar.extractfile(caption_member).read())
                    if caption is None:
                        self._leave_out(f"{key} ({caption_member})", "caption not valid UTF-8")
                        continue
                    self.members[key] = (path, member)
                    self.items.append((key, caption))
        self._report_invalid(", ".join(str(p) for p in paths))
        if not self.items:
            raise ValueError(f"no key.mp4 + key.txt pairs in the shards {[str(p) for p in paths]}")

    def open(self, name: str) -> io.BytesIO:
        path, member = self.members[name]
        with tarfile.open(path) as tar:
            return io.BytesIO(tar.extractfile(member).read())


def count_reasons(items: Sequence[tuple[str, str]]) -> str:
    """``"2 no caption file, 1 caption not valid UTF-8"`` for (name, reason) pairs."""
    return ", ".join(f"{n} {reason}" for reason, n in Counter(reason for _, reason in items).most_common())


def decode_caption(data: bytes) -> str | None:
    """A caption file's text (UTF-8, surrounding whitespace removed), or None when it is not valid UTF-8."""
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def is_valid_text(text: str) -> bool:
    """False for text read with ``errors="surrogateescape"`` that held bytes which are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
class PromptDataset(torch.utils.data.Dataset):
    """Prompts only, for objectives that sample their own videos (VADER; InstructVideo editing samples).

    From a list (``prompts``) or a text file (``file``: one prompt per line, blank lines skipped; a
    relative path is taken from the working directory). A sample is ``{"caption", "index", "skipped": []}``.
    """

    #: batches carry no clips (the trainer checks this against the objective's ``batch_inputs``)
    has_videos = False

    def __init__(self, prompts: Sequence[str] | None = None, file: str | Path | None = None):
        if (prompts is None) == (file is None):
            raise ValueError("data: give exactly one of `prompts` (a list) and `file` (one prompt per line)")
        if file is not None:
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"prompt file not found: {path.resolve()}")
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.prompts = [str(p) for p in prompts]
        if not self.prompts:
            raise ValueError(f"data: no prompts{f' in {file}' if file is not None else ''}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        return {"caption": self.prompts[index], "index": index, "skipped": []}


#: per-sample tensors a dataset may provide, stacked into the batch under the same name: decoded clips
#: (C, T, H, W), or precomputed VAE latents (c, T, h, w) or the VAE posterior they are drawn from
#: (``posterior_mean``, ``posterior_std``: ``distill.latent_cache``), and text embeddings (L, D) that the
#: trainer then uses instead of encoding
TENSOR_FIELDS = ("pixels", "latents", "posterior_mean", "posterior_std", "text_embedding", "uncond_embedding")


def collate_samples(samples: list[dict]) -> dict:
    """Stack the tensor fields the samples carry (``TENSOR_FIELDS``; pixels to (B, C, T, H, W)); keep
    captions, indices, global positions (when the samples carry them) and skipped names as lists."""
    batch = {
        "captions": [s["caption"] for s in samples],
        "indices": [s["index"] for s in samples],
        "skipped": [name for s in samples for name in s["skipped"]],
    }
    for field in TENSOR_FIELDS:
        if field in samples[0]:
            batch[field] = torch.stack([s[field] for s in samples])
    if all("position" in s for s in samples):
        batch["positions"] = [s["position"] for s in samples]
    return batch


class GlobalPositionSampler(torch.utils.data.Sampler):
    """Batches of dataset indices addressed by a global sample position, resumable and rank-aware.

    Global position p maps to epoch p // len and to ``perm_epoch[p % len]`` (a permutation
    seeded by (seed, epoch), or the identity without shuffling). Micro-batch m of process
    ``rank`` among ``world_size`` holds positions (m * world_size + rank) * batch_size + j,
    j < batch_size, so all processes together consume positions in order and the rank only
    shards the data. ``start_batch`` resumes at a micro-batch. Yields lists of
    (dataset index, global position) pairs, forever.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    def positions(self, batch: int) -> list[int]:
        first = (batch * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def index_of(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_items)
        if not self.shuffle:
            return offset
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
            self._perm_cache = (epoch, torch.randperm(self.num_items, generator=generator))
        return int(self._perm_cache[1][offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        while True:
            yield [(self.index_of(p), p) for p in self.positions(batch)]
            batch += 1


class PositionedDataset(torch.utils.data.Dataset):
    """Wraps a ``VideoCaptionDataset`` to take (index, global position) keys from ``GlobalPositionSampler``.

    The clip start is seeded by the epoch of the position, and the position travels with the
    sample (``positions`` in the batch) so per-sample randomness can be keyed by it.
    """

    def __init__(self, dataset: VideoCaptionDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        if hasattr(self.dataset, "set_epoch"):  # datasets whose items vary by epoch (clip starts)
            self.dataset.set_epoch(position // len(self.dataset))
        sample = self.dataset[index]
        sample["position"] = position
        return sample

