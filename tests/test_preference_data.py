"""Mini-world ground-truth preference pairs (miniworld/preferences.py) and the preference CSV reader
(distill/preference_data.py)."""

import csv

import numpy as np
import pytest
import torch

from distill.preference_data import PreferencePairsCSV, collate_pairs
from miniworld import preferences, world
from miniworld.minibench import score_video

CAPTION = "a green square moving up on a gray background"


def test_levels_count_the_missing_defects():
    assert preferences.levels_of(set()) == {"TA": 3, "MQ": 2, "VQ": 2}
    assert preferences.levels_of({"colour", "background", "blur"}) == {"TA": 1, "MQ": 2, "VQ": 1}
    assert preferences.levels_of({"motion", "size_jitter", "extra_object", "shape"}) == {"TA": 2, "MQ": 0, "VQ": 1}
    assert [preferences.label(2, 1), preferences.label(0, 3), preferences.label(1, 1)] == ["A", "B", "tie"]


@pytest.mark.parametrize("defect, dimension, value", [
    ("colour", "colour", 0.0), ("shape", "shape", 0.0), ("background", "background", 0.0), ("motion", "motion", 0.0),
])
def test_alignment_and_motion_defects_are_what_minibench_sees(defect, dimension, value):
    attrs = world.parse_caption(CAPTION)
    for seed in range(5):
        clean = score_video(preferences.render_with_defects(attrs, set(), np.random.default_rng(seed)), CAPTION)
        broken = score_video(preferences.render_with_defects(attrs, {defect}, np.random.default_rng(seed)), CAPTION)
        assert clean[dimension] == 1.0 and broken[dimension] == value


def test_quality_defects_lower_minibench_quality():
    attrs = world.parse_caption(CAPTION)
    rng = lambda s: np.random.default_rng(s)  # noqa: E731
    clean = [score_video(preferences.render_with_defects(attrs, set(), rng(s)), CAPTION) for s in range(8)]
    jitter = [score_video(preferences.render_with_defects(attrs, {"size_jitter"}, rng(s)), CAPTION) for s in range(8)]
    extra = [score_video(preferences.render_with_defects(attrs, {"extra_object"}, rng(s)), CAPTION) for s in range(8)]
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    assert mean(jitter, "temporal_consistency") < mean(clean, "temporal_consistency") - 0.2
    assert mean(extra, "single_object") < mean(clean, "single_object") - 0.4
    blurred = preferences.render_with_defects(attrs, {"blur"}, rng(0)).astype(float)
    sharp = preferences.render_with_defects(attrs, set(), rng(0)).astype(float)
    edges = lambda v: np.abs(np.diff(v, axis=2)).mean()  # noqa: E731
    assert edges(blurred) < 0.7 * edges(sharp)


def test_pairs_are_pure_functions_of_seed_and_index():
    caption, a, b = preferences.pair_at(3, seed=5)
    again = preferences.pair_at(3, seed=5)
    assert caption == again[0] and np.array_equal(a.video, again[1].video) and np.array_equal(b.video, again[2].video)
    assert not np.array_equal(a.video, b.video)
    assert world.parse_caption(caption) and not world.parse_caption(caption).held_out


def test_written_pairs_read_back(tmp_path):
    csv_path = preferences.write_pairs(tmp_path, 6, seed=2, progress=False)
    data = PreferencePairsCSV(csv_path, num_frames=8, fps=8, height=32, width=32)
    assert len(data) == 6 and data.has_overall and data.has_scores
    sample = data[4]
    caption, a, b = preferences.pair_at(4, seed=2)
    assert sample["prompt"] == caption
    # lossless mp4: the decoded clip is the rendered video
    expected = torch.from_numpy(a.video).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(sample["pixels_a"], expected, atol=1e-6, rtol=0)
    codes = {"A": 1, "B": -1, "tie": 0}
    assert sample["labels"].tolist() == [codes[preferences.label(a.levels[d], b.levels[d])] for d in "VQ MQ TA".split()]
    assert sample["scores_b"].tolist() == [b.levels[d] for d in ("VQ", "MQ", "TA")]
    batch = collate_pairs([data[0], data[1]])
    assert batch["pixels_a"].shape == (2, 3, 8, 32, 32) and batch["labels"].shape == (2, 3)
    assert batch["overall"].shape == (2,)


def test_bad_csvs_are_named(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = [["prompt", "video_a", "video_b", "VQ", "MQ", "TA"], ["a cat", "a.mp4", "b.mp4", "A", "tie", "B"],
            ["a dog", "c.mp4", "d.mp4", "A", "maybe", "B"]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"pairs.csv line 3, column MQ: 'maybe' is not a preference label"):
        PreferencePairsCSV(path)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['AQ'\]"):
        PreferencePairsCSV(path, dimensions=("VQ", "AQ"))
    with pytest.raises(FileNotFoundError, match="preference CSV not found"):
        PreferencePairsCSV(tmp_path / "none.csv")


def test_undecodable_pairs_are_skipped_and_counted(tmp_path):
    csv_path = preferences.write_pairs(tmp_path, 3, progress=False)
    (tmp_path / "videos" / "train_0_000001_b.mp4").write_bytes(b"not a video")
    data = PreferencePairsCSV(csv_path, num_frames=8, fps=8, height=32, width=32)
    sample = data[1]
    assert sample["index"] == 2 and sample["skipped"] == ["videos/train_0_000001_a.mp4 | videos/train_0_000001_b.mp4"]
    assert data.skipped == 1
