"""mp4/gif writing and reading, grids, atomic writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from t2v_turbo.video_io import read_video, save_grid, tile_videos, to_uint8_frames, write_gif, write_video


def gradient_video(t=6, h=32, w=48, shift=0):
    """Smooth frames (codec-friendly) that differ from frame to frame."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + 20 * i + shift) % 256, (y * 6 + 10 * i) % 256, np.full_like(x, 128)], -1) for i in range(t)]
    return np.asarray(frames, dtype=np.uint8)


def test_float_to_uint8_mapping():
    video = torch.zeros(3, 2, 4, 4)
    video[0] = -1.0
    video[1] = 1.0
    frames = to_uint8_frames(video)
    assert frames.shape == (2, 4, 4, 3) and frames.dtype == np.uint8
    assert (frames[..., 0] == 0).all() and (frames[..., 1] == 255).all() and (frames[..., 2] == 128).all()
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        to_uint8_frames(torch.zeros(2, 3, 4, 4))


def test_mp4_round_trip(tmp_path):
    frames = gradient_video()
    path = write_video(tmp_path / "a.mp4", frames, fps=8)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    # lossy H.264 on smooth content: small mean error
    assert np.abs(back.astype(float) - frames.astype(float)).mean() < 6.0
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_mp4_pads_odd_sizes(tmp_path):
    back = read_video(write_video(tmp_path / "odd.mp4", gradient_video(h=15, w=17), fps=4))
    assert back.shape == (6, 16, 18, 3)


def test_gif_frames_and_duration(tmp_path):
    frames = gradient_video(t=4)
    path = write_gif(tmp_path / "a.gif", frames, fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 100
        gif.seek(2)
        rgb = np.asarray(gif.convert("RGB"))
    assert rgb.shape == (32, 48, 3)


def test_grid_layout_and_png_sheet(tmp_path):
    a, b, c = gradient_video(t=3, h=8, w=8), gradient_video(t=3, h=8, w=8, shift=100), gradient_video(t=3, h=8, w=8, shift=50)
    grid = tile_videos([a, b, c], ncols=2, gap=2)
    assert grid.shape == (3, 18, 18, 3)
    assert np.array_equal(grid[:, :8, 10:18], b) and np.array_equal(grid[:, 10:18, :8], c)
    assert (grid[:, 10:, 10:] == 255).all()
    sheet = np.asarray(Image.open(save_grid(tmp_path / "sheet.png", [a, b])))
    assert sheet.shape == (18, 24, 3)
    assert np.array_equal(sheet[10:18, 8:16], b[1])
    assert read_video(save_grid(tmp_path / "grid.mp4", [a, b], fps=4)).shape == (3, 8, 18, 3)


def test_bad_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="'.avi'"):
        write_video(tmp_path / "a.avi", gradient_video())
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        read_video(tmp_path / "nothing.mp4")


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        write_gif(tmp_path / "bad.gif", np.zeros((2, 4, 4, 4), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []
