"""Fault injection on training data: bad captions and rows are left out, named and counted; bad
videos are replaced by draws from a stream; the trainer prints the counts at the end of a run."""

import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from distill.data import VideoCaptionCSV, VideoCaptionFolder, VideoCaptionShards
from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SIZE = dict(num_frames=4, fps=8, height=16, width=16)
NOT_UTF8 = b"a caf\xe9 in Paris"  # Latin-1, not UTF-8


@pytest.fixture
def folder(tmp_path):
    """Two good clips, one caption that is not UTF-8, one mp4 without a caption file."""
    root = write_caption_folder(tmp_path / "videos", ["a cat running", "a red car", "a bird", "a dog"])
    (root / "clip2.txt").write_bytes(NOT_UTF8)
    (root / "clip3.txt").unlink()
    return root


def test_folder_leaves_out_bad_captions_and_uncaptioned_videos_naming_them(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        dataset = VideoCaptionFolder(folder, **SIZE)
    assert dataset.items == [("clip0.mp4", "a cat running"), ("clip1.mp4", "a red car")]
    assert dataset.invalid_items == [("clip2.mp4 (clip2.txt)", "caption not valid UTF-8"),
                                     ("clip3.mp4 (clip3.txt)", "no caption file")]
    assert "leaving out clip2.mp4 (clip2.txt): caption not valid UTF-8" in caplog.text
    assert "leaving out clip3.mp4 (clip3.txt): no caption file" in caplog.text
    assert "2 item(s) left out (1 caption not valid UTF-8, 1 no caption file); 2 usable" in caplog.text


def test_csv_rows_without_a_caption_or_with_bad_bytes_are_named_by_line(folder, caplog):
    lines = [b"video,caption", b"clip0.mp4,a cat running", b"clip1.mp4," + NOT_UTF8, b"clip2.mp4",
             b",a caption without a video", b"clip1.mp4,a red car"]
    (folder / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        dataset = VideoCaptionCSV(folder / "train.csv", **SIZE)
    assert dataset.items == [("clip0.mp4", "a cat running"), ("clip1.mp4", "a red car")]
    assert dataset.invalid_items == [("train.csv line 3 ('clip1.mp4')", "caption or path not valid UTF-8"),
                                     ("train.csv line 4 (clip2.mp4)", "no 'caption' cell"),
                                     ("train.csv line 5", "no 'video' cell")]
    assert all(isinstance(caption, str) for _, caption in dataset.items)  # nothing for the tokenizer to trip on
    assert "leaving out train.csv line 4 (clip2.mp4): no 'caption' cell" in caplog.text


def test_tar_members_with_bad_captions_are_left_out(folder, tmp_path):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("clip0.mp4", "clip0.txt", "clip2.mp4", "clip2.txt", "clip3.mp4"):
            tar.add(folder / name, arcname=name)
    dataset = VideoCaptionShards(str(shard), **SIZE)
    assert dataset.items == [("shard-000.tar:clip0.mp4", "a cat running")]
    assert dataset.invalid_items == [("shard-000.tar:clip2.mp4 (clip2.txt)", "caption not valid UTF-8"),
                                     ("shard-000.tar:clip3.mp4 (clip3.txt)", "no caption file")]


def test_a_run_of_bad_videos_is_replaced_by_draws_not_by_one_neighbour(tmp_path):
    captions = [f"good {i}" for i in range(6)]
    root = write_caption_folder(tmp_path / "videos", captions)
    for i in range(6):  # six corrupt videos in a row (sorted names bad0..bad5 come first)
        (root / f"bad{i}.mp4").write_bytes(np.random.default_rng(i).bytes(512))
        (root / f"bad{i}.txt").write_text(f"bad {i}")
    dataset = VideoCaptionFolder(root, **SIZE)
    assert [name for name, _ in dataset.items[:6]] == [f"bad{i}.mp4" for i in range(6)]
    samples = [dataset[i] for i in range(6)]
    assert dataset.skipped == sum(len(s["skipped"]) for s in samples)
    good = {i for i, (name, _) in enumerate(dataset.items) if name.startswith("clip")}
    assert all(s["index"] in good and s["skipped"][0] == f"bad{i}.mp4" for i, s in enumerate(samples))
    assert len({s["index"] for s in samples}) > 1, [s["index"] for s in samples]
    again = dataset[3]
    assert again["index"] == samples[3]["index"] and again["skipped"] == samples[3]["skipped"]  # a pure function
    dataset.set_epoch(1)  # another epoch draws from another stream
    assert [dataset[i]["index"] for i in range(6)] != [s["index"] for s in samples]


def test_the_trainer_prints_the_skip_counts_at_the_end_of_a_run(folder, tmp_path, caplog):
    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import load_config

    (folder / "clip5.mp4").write_bytes(np.random.default_rng(0).bytes(512))  # corrupt, decoded when drawn
    (folder / "clip5.txt").write_text("a corrupt clip")
    teacher = build_tiny_diffusers_t2v(tmp_path / "teacher")
    cfg = load_config(TINY, [f"teacher.path={teacher}", f"data.folder={folder}", f"output_dir={tmp_path / 'run'}",
                             "logging.tensorboard=false", "train.max_steps=1", "dataloader.batch_size=3",
                             "dataloader.shuffle=false", "train.checkpoint_every=0"])
    recipe = TrainingRecipe(cfg)
    try:
        recipe.setup()
        with caplog.at_level(logging.INFO, logger="distill.trainer"):
            recipe.train()
    finally:
        recipe.cleanup()
    assert recipe.skipped_videos >= 1  # position 2 is clip5 (the corrupt one): replaced
    assert (f"skipped in this run: {recipe.skipped_videos} video(s) that could not be decoded (replaced while "
            "training); 2 data item(s) left out when the data was read (1 caption not valid UTF-8, 1 no caption "
            "file); 0 optimizer step(s) with a non-finite loss or gradient") in caplog.text
