"""Video-caption datasets: real mp4 files written with PyAV, decoded back; bad files skipped and counted."""

import csv
import logging
import tarfile

import numpy as np
import pytest
import torch

from distill.data import (
    GlobalPositionSampler,
    PositionedDataset,
    VideoCaptionCSV,
    VideoCaptionFolder,
    VideoCaptionShards,
    collate_samples,
    decode_clip,
    frames_to_pixels,
)
from t2v_turbo.video_io import write_mp4


def write_test_mp4(path, num_frames, fps=8, height=24, width=32):
    """Frame i is a flat grey of value 10 * i (so decoded frames reveal which source frame they are)."""
    frames = np.stack([np.full((height, width, 3), 10 * i, dtype=np.uint8) for i in range(num_frames)])
    write_mp4(path, frames, fps=fps)


@pytest.fixture
def video_dir(tmp_path):
    write_test_mp4(tmp_path / "good.mp4", num_frames=16, fps=8)
    (tmp_path / "good.txt").write_text("a cat running\n")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "corrupt.txt").write_text("a dog")
    write_test_mp4(tmp_path / "short.mp4", num_frames=2, fps=8)
    (tmp_path / "short.txt").write_text("a bird")
    return tmp_path


def test_decode_clip_samples_target_fps(tmp_path):
    write_test_mp4(tmp_path / "v.mp4", num_frames=16, fps=8)
    # 4 frames at 4 fps from an 8 fps video: every second source frame, from the start.
    frames = decode_clip(str(tmp_path / "v.mp4"), num_frames=4, fps=4, random_start=False)
    assert frames.shape == (4, 24, 32, 3) and frames.dtype == torch.uint8
    means = frames.float().mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.tensor([0.0, 20.0, 40.0, 60.0]), atol=3)


@pytest.mark.parametrize("size,target", [((20, 40), (10, 10)), ((24, 32), (16, 16)), ((30, 20), (12, 18)),
                                         ((9, 12), (18, 18))])
def test_frames_to_pixels_resizes_short_side_and_centre_crops(size, target):
    """Against PIL on random content: scale by max(h / H, w / W) (PIL's bilinear filter, antialiased when
    shrinking, is the reference), then crop the centre; values / 127.5 - 1."""
    from PIL import Image

    (height, width), (h, w) = size, target
    frames = np.random.default_rng(height).integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)
    pixels = frames_to_pixels(torch.from_numpy(frames), height=h, width=w)
    assert pixels.shape == (3, 2, h, w) and pixels.dtype == torch.float32
    scale = max(h / height, w / width)
    new_h, new_w = max(h, round(height * scale)), max(w, round(width * scale))
    top, left = (new_h - h) // 2, (new_w - w) // 2
    expected = np.empty((3, 2, h, w), np.float32)
    for t in range(2):
        for c in range(3):
            channel = Image.fromarray(frames[t, :, :, c].astype(np.float32) / 127.5 - 1.0, mode="F")
            resized = np.asarray(channel.resize((new_w, new_h), Image.BILINEAR))
            expected[c, t] = resized[top : top + h, left : left + w]
    torch.testing.assert_close(pixels, torch.from_numpy(expected).clamp(-1, 1), atol=1e-5, rtol=0)


def test_frames_to_pixels_without_resize_keeps_values():
    frames = torch.arange(2 * 4 * 6 * 3, dtype=torch.uint8).reshape(2, 4, 6, 3)
    pixels = frames_to_pixels(frames, height=4, width=4)  # same short side: only the centre crop, columns 1..4
    torch.testing.assert_close(pixels, frames[:, :, 1:5].permute(3, 0, 1, 2).float() / 127.5 - 1.0, atol=0, rtol=0)


def test_folder_dataset_skips_and_counts_bad_files(video_dir, caplog):
    dataset = VideoCaptionFolder(video_dir, num_frames=8, fps=8, height=16, width=16)
    assert [name for name, _ in dataset.items] == ["corrupt.mp4", "good.mp4", "short.mp4"]
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        samples = [dataset[i] for i in range(3)]
    # every bad item is replaced by draws from its own stream until the good one comes up
    assert all(s["caption"] == "a cat running" for s in samples)
    assert [s["skipped"][:1] for s in samples] == [["corrupt.mp4"], [], ["short.mp4"]]
    skipped = [name for s in samples for name in s["skipped"]]
    assert dataset.skipped == len(skipped)
    assert dataset.skip_reasons == {"cannot decode": skipped.count("corrupt.mp4"), "too short": skipped.count("short.mp4")}
    messages = [r.getMessage() for r in caplog.records]
    assert any("corrupt.mp4" in m and "cannot decode" in m for m in messages)
    assert any("short.mp4" in m and "too short: 2 frames" in m for m in messages)
    assert samples[1]["pixels"].shape == (3, 8, 16, 16)
    batch = collate_samples(samples)
    assert batch["pixels"].shape == (3, 3, 8, 16, 16) and batch["skipped"] == skipped


def test_csv_dataset_paths_relative_to_csv(video_dir):
    sub = video_dir / "lists"
    sub.mkdir()
    with open(sub / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        writer.writerow(["../good.mp4", "a cat"])
        writer.writerow(["../missing.mp4", "nothing"])
    dataset = VideoCaptionCSV(sub / "train.csv", num_frames=4, fps=4, height=8, width=8, random_start=False)
    first = dataset[0]
    assert first["caption"] == "a cat" and first["pixels"].shape == (3, 4, 8, 8)
    second = dataset[1]
    assert second["skipped"] == ["../missing.mp4"] and dataset.skipped == 1


def test_csv_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        VideoCaptionCSV(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("path,text\nx.mp4,y\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['caption', 'video'\]"):
        VideoCaptionCSV(tmp_path / "bad.csv")


def test_all_bad_files_raise_naming_them(video_dir):
    (video_dir / "good.txt").unlink()
    dataset = VideoCaptionFolder(video_dir, num_frames=8, fps=8, height=16, width=16)
    with pytest.raises(RuntimeError, match="could not be decoded, starting at corrupt.mp4"):
        dataset[0]


def test_tar_shards(video_dir, tmp_path):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("good.mp4", "good.txt", "corrupt.mp4", "corrupt.txt"):
            tar.add(video_dir / name, arcname=name)
    dataset = VideoCaptionShards([str(shard)], num_frames=8, fps=8, height=16, width=16)
    assert len(dataset) == 2
    assert len(VideoCaptionShards(str(tmp_path / "shard-*.tar"))) == 2  # an absolute glob pattern
    with pytest.raises(FileNotFoundError, match="no tar shards match"):
        VideoCaptionShards(str(tmp_path / "none-*.tar"))
    sample = dataset[0]
    assert sample["skipped"] == ["shard-000.tar:corrupt.mp4"]
    assert sample["caption"] == "a cat running" and sample["pixels"].shape == (3, 8, 16, 16)


def test_global_position_sampler_shards_positions_and_resumes():
    world = [GlobalPositionSampler(5, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    firsts = [next(iter(s)) for s in world]
    assert [p for _, p in firsts[0]] == [0, 1] and [p for _, p in firsts[1]] == [2, 3]
    # positions 0..9 = two epochs, each a permutation of the 5 items
    single = GlobalPositionSampler(5, batch_size=1, seed=3)
    it = iter(single)
    order = [next(it)[0][0] for _ in range(10)]
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))
    resumed = GlobalPositionSampler(5, batch_size=1, seed=3, start_batch=7)
    assert [next(iter(resumed))[0][0]] == [order[7]]


def test_positioned_dataset_is_a_pure_function_of_position(video_dir):
    base = VideoCaptionFolder(video_dir, num_frames=4, fps=8, height=16, width=16)
    dataset = PositionedDataset(base)
    a = dataset[(1, 4)]
    other_epoch = dataset[(1, 7)]
    b = dataset[(1, 4)]
    assert a["position"] == 4 and torch.equal(a["pixels"], b["pixels"])
    # another epoch draws another clip start from the same 16-frame video
    assert not torch.equal(a["pixels"], other_epoch["pixels"])


def test_skips_are_reported_from_dataloader_workers(video_dir):
    dataset = PositionedDataset(VideoCaptionFolder(video_dir, num_frames=8, fps=8, height=16, width=16))
    sampler = GlobalPositionSampler(len(dataset), batch_size=3, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=1, collate_fn=collate_samples)
    batch = next(iter(loader))
    # the worker's own counter is lost with the worker; the names travel with the batch
    in_process = [name for position in range(3) for name in dataset[(position, position)]["skipped"]]
    assert batch["skipped"] == in_process and in_process[:1] == ["corrupt.mp4"] and "short.mp4" in in_process
    assert batch["positions"] == [0, 1, 2] and batch["pixels"].shape == (3, 3, 8, 16, 16)
