"""Video files: mp4 (PyAV) and gif (Pillow) writing, mp4 reading, grids of several videos.

In-memory videos are either pipeline output, float (3, T, H, W) in [-1, 1], or uint8
(T, H, W, 3) frames (the on-disk convention). Every write is atomic (``t2v_turbo.fileio``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from t2v_turbo.fileio import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, T, H, W) float in [-1, 1] -> (T, H, W, 3) uint8; uint8 (T, H, W, 3) passes through."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (T, H, W, 3), got {video.shape}")
        return video
    video = torch.as_tensor(video)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"a float video must be (3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def to_uint8_videos(videos) -> list[np.ndarray]:
    """A batch -> list of uint8 (T, H, W, 3): float (B, 3, T, H, W) in [-1, 1] (torch or numpy),
    uint8 (B, T, H, W, 3), or a list of either kind of single video."""
    if isinstance(videos, (torch.Tensor, np.ndarray)) and videos.ndim != 5:
        raise ValueError(f"a batch of videos must be 5-D, got shape {tuple(videos.shape)}")
    if isinstance(videos, torch.Tensor) and videos.dtype == torch.uint8:
        videos = videos.cpu().numpy()
    return [to_uint8_frames(v) for v in videos]


def _mp4_codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # PyAV builds without GPL codecs lack libx264
        return "mpeg4"


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad height and width to even sizes by repeating the last row/column (yuv420p needs it)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(path: str | Path, video, fps: int = 8, crf: int = 18, lossless: bool = False) -> Path:
    """H.264 mp4 at ``fps``: libx264 yuv420p at ``crf`` (mpeg4 where libx264 is missing), or with
    ``lossless`` libx264rgb at crf 0 in RGB, which reads back bit-identical (small saturated
    colours, e.g. the mini world's, do not survive 4:2:0 chroma subsampling)."""
    import av

    frames = to_uint8_frames(video) if lossless else _even(to_uint8_frames(video))

    def write(tmp: str) -> None:
        codec = "libx264rgb" if lossless else _mp4_codec()
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "rgb24" if lossless else "yuv420p"
            if lossless:
                stream.options = {"crf": "0", "preset": "veryfast"}
            elif codec == "libx264":
                stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    return atomic_write(path, write)


def write_gif(path: str | Path, video, fps: int = 8) -> Path:
    """Looping animated gif at ``fps``."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in to_uint8_frames(video)]
    duration_ms = int(round(1000 / fps))
    return atomic_write(
        path,
        lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0),
    )


def write_video(path: str | Path, video, fps: int = 8) -> Path:
    """Write by suffix: ``.mp4`` or ``.gif``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return write_mp4(path, video, fps)
    if suffix == ".gif":
        return write_gif(path, video, fps)
    raise ValueError(f"cannot write video {path}: suffix {suffix!r} is not one of {VIDEO_SUFFIXES}")


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video file as uint8 (T, H, W, 3) RGB; ``ValueError`` naming the file if it
    cannot be decoded or has no frames."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path.resolve()}")
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (OSError, av.error.FFmpegError, IndexError, ValueError) as err:
        raise ValueError(f"{path}: cannot decode video: {err}") from err
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    return np.stack(frames)


def count_frames(path: str | Path) -> int:
    """Frames decoded from ``path``; 0 when the file is missing or cannot be decoded (e.g. truncated)."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (OSError, av.error.FFmpegError, IndexError, ValueError):
        return 0


def tile_videos(videos: Sequence, ncols: int | None = None, gap: int = 2) -> np.ndarray:
    """Several videos of equal size and length -> one uint8 (T, H', W', 3) video laid out in a grid."""
    clips = [to_uint8_frames(v) for v in videos]
    if not clips:
        raise ValueError("no videos to tile")
    if len({c.shape for c in clips}) != 1:
        raise ValueError(f"videos in a grid must share (T, H, W, 3); got {sorted({c.shape for c in clips})}")
    t, h, w, _ = clips[0].shape
    ncols = ncols or len(clips)
    nrows = -(-len(clips) // ncols)
    grid = np.full((t, nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap, 3), 255, dtype=np.uint8)
    for i, clip in enumerate(clips):
        r, c = divmod(i, ncols)
        grid[:, r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = clip
    return grid


def save_grid(path: str | Path, videos: Sequence, ncols: int | None = None, fps: int = 8) -> Path:
    """A grid of several videos: ``.gif``/``.mp4`` animate it; ``.png`` is a still sheet with one
    row per video and one column per frame."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return write_video(path, tile_videos(videos, ncols), fps)
    if suffix == ".png":
        from PIL import Image

        rows = [np.concatenate(list(to_uint8_frames(v)), axis=1) for v in videos]
        sheet = tile_videos([row[None] for row in rows], ncols=1)[0]
        return atomic_write(path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    raise ValueError(f"cannot write grid {path}: suffix {suffix!r} is not one of .gif, .mp4, .png")
