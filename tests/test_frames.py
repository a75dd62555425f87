"""Frame selectors: counts, ranges, determinism with a seeded generator, distributions."""

import math
from collections import Counter

import pytest
import torch

from rewards.frames import (
    PRESETS,
    FrameSelection,
    clip_frames,
    preset_frames,
    random_frames,
    segment_bounds,
    segmental_frames,
    temporal_attenuation_weights,
)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("num_frames,m", [(16, 5), (16, 16), (8, 1), (24, 6)])
def test_random_frames_are_m_distinct_sorted_in_range(num_frames, m):
    for seed in range(20):
        idx = random_frames(num_frames, m, seeded(seed))
        assert len(idx) == m == len(set(idx))
        assert idx == sorted(idx)
        assert all(0 <= i < num_frames for i in idx)


def test_random_frames_deterministic_and_seed_dependent():
    assert random_frames(16, 5, seeded(3)) == random_frames(16, 5, seeded(3))
    draws = {tuple(random_frames(16, 5, seeded(s))) for s in range(10)}
    assert len(draws) > 1


def test_random_frames_uniform_over_frames():
    g = seeded(0)
    counts = Counter(i for _ in range(4000) for i in random_frames(16, 5, g))
    expected = 4000 * 5 / 16  # 1250 per frame
    assert set(counts) == set(range(16))
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts.values())


@pytest.mark.parametrize("bad_m", [0, 17])
def test_random_frames_rejects_bad_count(bad_m):
    with pytest.raises(ValueError, match="`m`"):
        random_frames(16, bad_m)


def test_segment_bounds_cover_video_without_overlap():
    assert segment_bounds(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    bounds = segment_bounds(10, 3)
    assert bounds == [(0, 3), (3, 6), (6, 10)]


def test_segmental_frames_one_per_segment_uniform_within():
    g = seeded(1)
    hits = Counter()
    for _ in range(2000):
        idx = segmental_frames(16, 4, g)
        assert len(idx) == 4
        for (lo, hi), i in zip(segment_bounds(16, 4), idx):
            assert lo <= i < hi
        hits.update(idx)
    assert set(hits) == set(range(16))  # every frame of every segment reachable
    assert all(abs(c - 500) < 5 * math.sqrt(500) for c in hits.values())
    assert segmental_frames(16, 4, seeded(7)) == segmental_frames(16, 4, seeded(7))


def test_temporal_attenuation_weights_values():
    w = temporal_attenuation_weights([0, 4, 8, 15], 16, lam=1.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-8), math.exp(-4), 1.0, math.exp(-7)]))
    assert torch.equal(temporal_attenuation_weights([1, 9], 16, lam=0.0), torch.ones(2))
    # not normalised: a single middle frame keeps weight 1, two frames do not sum to 1
    assert temporal_attenuation_weights([7, 9], 16, 0.5).sum() != pytest.approx(1.0)


def test_clip_frames_stride_and_start():
    starts = Counter()
    g = seeded(2)
    for _ in range(1000):
        idx = clip_frames(16, 8, 2, g)
        assert len(idx) == 8
        assert all(b - a == 2 for a, b in zip(idx, idx[1:]))
        assert idx[-1] < 16
        starts[idx[0]] += 1
    assert set(starts) == {0, 1}
    assert abs(starts[0] - 500) < 100
    assert clip_frames(15, 8, 2, seeded(0)) == list(range(0, 15, 2))


def test_clip_frames_of_a_video_shorter_than_the_span_are_even_with_repeats():
    # span 15 > 14 frames: round(linspace(0, 13, 8)), whatever the generator
    assert clip_frames(14, 8, 2, seeded(0)) == clip_frames(14, 8, 2, seeded(1)) == [0, 2, 4, 6, 7, 9, 11, 13]
    assert clip_frames(5, 8, 2) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert clip_frames(1, 8, 2) == [0] * 8
    for bad in [(16, 0, 2), (16, 8, 0), (0, 8, 2)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            clip_frames(*bad)


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("first", [0]),
        ("middle", [6]),
        ("last", [11]),
        ("first_middle_last", [0, 6, 11]),
        ("every_second", [0, 2, 4, 6, 8, 10]),
        ("all", list(range(12))),
    ],
)
def test_presets_on_twelve_frames(preset, expected):
    assert preset in PRESETS
    assert preset_frames(12, preset) == expected


def test_preset_unknown_name():
    with pytest.raises(ValueError, match="unknown frame preset 'second'"):
        preset_frames(12, "second")


def test_frame_selection_modes_and_weights():
    assert FrameSelection("last").indices(16) == [15]
    assert len(FrameSelection("random", num_frames=5).indices(16, seeded(0))) == 5
    assert FrameSelection("random", num_frames=5).indices(3, seeded(0)) == [0, 1, 2]
    sel = FrameSelection("segmental", segments=4, tar_lambda=1.0)
    idx = sel.indices(16, seeded(0))
    # TAR: exp(-lambda |f - F / 2|) with F = 16 frames, lambda = 1
    torch.testing.assert_close(sel.weights(idx, 16), torch.tensor([math.exp(-abs(f - 8)) for f in idx]))
    assert FrameSelection().weights([0, 1], 16) is None
    assert len(FrameSelection().indices(16, seeded(0))) == 5  # the public code's m = 5 random frames
    with pytest.raises(ValueError, match="`mode`"):
        FrameSelection("sometimes")
