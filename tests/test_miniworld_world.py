"""The mini world's generator: determinism, spec values, caption/attribute agreement, splits, files."""

import numpy as np
import pytest

from miniworld import world
from t2v_turbo.video_io import read_video


def test_sample_is_a_pure_function_of_seed_index_split():
    a, b = world.sample_at(17, seed=3), world.sample_at(17, seed=3)
    assert np.array_equal(a.video, b.video) and a.caption == b.caption
    assert not np.array_equal(world.sample_at(18, seed=3).video, a.video)
    assert not np.array_equal(world.sample_at(17, seed=4).video, a.video)
    stream = world.stream(seed=3, start=17)
    assert np.array_equal(next(stream).video, a.video)


def test_video_format_and_palette():
    s = world.sample_at(0)
    assert s.video.dtype == np.uint8 and s.video.shape == (8, 32, 32, 3)
    bg = np.array(world.BACKGROUNDS[s.attributes.background])
    corner = s.video[:, 0, 0].astype(float)
    assert np.abs(corner - bg).max() <= 15  # sigma-3 noise around the palette colour
    assert 5 <= s.radius <= 7


@pytest.mark.parametrize("index", range(40))
def test_caption_agrees_with_attributes_and_pixels(index):
    s = world.sample_at(index, seed=1, split="all")
    assert world.parse_caption(s.caption) == s.attributes
    assert s.caption == world.caption_of(s.attributes)
    colour = np.array(world.COLOURS[s.attributes.colour])
    # the object's colour is present exactly at the object's centre in every frame
    dx, dy = world.DIRECTIONS[s.attributes.motion]
    for t in range(8):
        x = s.start[0] + dx * s.speed * t
        y = s.start[1] + dy * s.speed * t + (0.5 * s.radius if s.attributes.shape == "triangle" else 0)
        assert np.abs(s.video[t, int(y), int(x)].astype(int) - colour).max() <= 2
    if s.attributes.motion != "still":
        assert 1.2 <= s.speed <= 1.8


def test_object_stays_inside_frame():
    for i in range(60):
        s = world.sample_at(i, split="all")
        dx, dy = world.DIRECTIONS[s.attributes.motion]
        for t in (0, 7):
            x, y = s.start[0] + dx * s.speed * t, s.start[1] + dy * s.speed * t
            assert s.radius <= x <= 32 - s.radius and s.radius <= y <= 32 - s.radius


def test_caption_counts_held_out_and_eval_set():
    assert len(set(world.all_captions())) == 270
    assert len(world.held_out_captions()) == 45
    assert all(world.parse_caption(c).held_out for c in world.held_out_captions())
    train = {(a.colour, a.shape) for a in world.train_attributes()}
    assert not train & set(world.HELD_OUT_PAIRS) and len(world.train_attributes()) == 225
    for i in range(300):
        assert not world.sample_at(i, split="train").attributes.held_out
    prompts = world.evaluation_prompts()
    assert len(prompts) == 90 == len(set(prompts))
    assert sum(world.parse_caption(p).held_out for p in prompts) == 45
    from pathlib import Path

    shipped = (Path(__file__).parents[1] / "miniworld/data/eval_prompts.txt").read_text().splitlines()
    assert shipped == prompts


def test_captions_exact_wording_and_strip_motion():
    a = world.Attributes("red", "circle", "left", "gray")
    assert world.caption_of(a) == "a red circle moving left on a gray background"
    assert world.caption_of(world.Attributes("red", "circle", "still", "gray")) == "a red circle staying still on a gray background"
    assert world.strip_motion("a red circle moving left on a gray background") == "a red circle on a gray background"
    with pytest.raises(ValueError, match="orange"):
        world.parse_caption("a orange circle moving left on a gray background")


def test_dataset_writer_is_lossless(tmp_path):
    import csv

    path = world.write_dataset(tmp_path, 3, seed=5, progress=False)
    rows = list(csv.DictReader(open(path)))
    assert [r["caption"] for r in rows] == [world.sample_at(i, 5).caption for i in range(3)]
    for i, r in enumerate(rows):
        assert np.array_equal(read_video(tmp_path / r["video"]), world.sample_at(i, 5).video)


@pytest.mark.parametrize("motion", world.MOTIONS)
def test_a_clip_played_backwards_shows_its_time_reversed_caption(motion):
    from miniworld import minibench

    caption = f"a green square moving {motion} on a black background" if motion != "still" else \
        "a green square staying still on a black background"
    reversed_caption = world.time_reversed_caption(caption)
    assert world.time_reversed_caption(reversed_caption) == caption
    assert reversed_caption.replace(world.parse_caption(reversed_caption).motion, "") == caption.replace(motion, "")
    clip = world.sample_for_caption(caption).video
    assert minibench.analyse_video(clip[::-1].copy())["motion"] == world.parse_caption(reversed_caption).motion
