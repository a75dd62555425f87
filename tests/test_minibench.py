"""MiniBench on ground truth (the ceiling) and on deliberately wrong videos."""

import json

import numpy as np
import pytest

from miniworld import minibench, world
from t2v_turbo.video_io import write_mp4


def write_lossless(path, video):
    write_mp4(path, video, fps=world.FPS, lossless=True)

PROMPTS = world.evaluation_prompts()


def test_ground_truth_scores_near_one():
    report = minibench.ground_truth_report()
    assert report["overall"]["total"] >= 0.97
    assert report["seen"]["count"] == report["held_out"]["count"] == 45
    for dim in ("background", "colour", "shape", "motion", "single_object"):
        assert report["overall"][dim] == 1.0


def _gt(prompt, index=0):
    return world.sample_for_caption(prompt, index=index).video


def test_wrong_colour_is_scored_wrong():
    p = "a red circle moving left on a gray background"
    video = _gt("a green circle moving left on a gray background")
    s = minibench.score_video(video, p)
    assert s["colour"] == 0.0 and s["shape"] == s["motion"] == s["background"] == 1.0


def test_reversed_motion_is_scored_wrong():
    for p in ("a blue square moving up on a teal background", "a white triangle moving right on a black background"):
        video = _gt(p)
        assert minibench.score_video(video, p)["motion"] == 1.0
        assert minibench.score_video(video[::-1], p)["motion"] == 0.0
    still = _gt("a blue square staying still on a teal background")
    assert minibench.score_video(still, "a blue square moving up on a teal background")["motion"] == 0.0


def test_wrong_shape_and_background_are_scored_wrong():
    video = _gt("a purple square staying still on a black background")
    assert minibench.score_video(video, "a purple circle staying still on a black background")["shape"] == 0.0
    assert minibench.score_video(video, "a purple square staying still on a teal background")["background"] == 0.0


def test_blank_and_two_objects_are_scored_wrong():
    p = "a yellow circle moving down on a gray background"
    blank = np.full((8, 32, 32, 3), 120, np.uint8)
    s = minibench.score_video(blank, p)
    assert s["colour"] == s["shape"] == s["motion"] == s["single_object"] == s["temporal_consistency"] == 0.0
    assert s["total"] < 0.2
    two = _gt(p).copy()
    two[:, 2:6, 2:6] = world.COLOURS["yellow"]
    assert minibench.score_video(two, p)["single_object"] == 0.0


def test_tensor_input_matches_uint8():
    videos = np.stack([_gt(p) for p in PROMPTS[:4]])
    r1 = minibench.evaluate(videos, PROMPTS[:4])
    r2 = minibench.evaluate(world.to_pixels(videos), PROMPTS[:4])
    assert r1["overall"] == r2["overall"]


def test_folder_with_unreadable_and_misnamed_files(tmp_path):
    for i, p in enumerate(PROMPTS[:3]):
        write_lossless(tmp_path / f"{p}-{i}.mp4", _gt(p))
    (tmp_path / f"{PROMPTS[3]}-0.mp4").write_bytes(b"not a video")
    write_lossless(tmp_path / "a pink circle moving left on a gray background-0.mp4", _gt(PROMPTS[0]))
    report = minibench.evaluate_folder(tmp_path)
    assert report["overall"]["count"] == 3 and report["overall"]["total"] >= 0.97
    bad = {b["video"].split("/")[-1]: b["error"] for b in report["unreadable"]}
    assert len(bad) == 2 and any("cannot decode" in e for e in bad.values()) and any("pink" in e for e in bad.values())
    md = minibench.to_markdown(report)
    assert "could not be scored" in md and "not a video" not in md


def test_cli_writes_json_and_markdown(tmp_path):
    from t2v_turbo.cli import main

    vids = tmp_path / "v"
    vids.mkdir()
    write_lossless(vids / f"{PROMPTS[0]}-0.mp4", _gt(PROMPTS[0]))
    write_lossless(vids / f"{PROMPTS[50]}-0.mp4", np.zeros((8, 32, 32, 3), np.uint8))
    assert main(["eval", "minibench", str(vids), "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["held_out"]["total"] >= 0.97 and report["seen"]["total"] < 0.3
    assert "held_out" in (tmp_path / "r.md").read_text()


def constructed_video():
    """8 frames of 32x32 on the gray background: a red square moving right one pixel per frame, 6 px wide
    in frames 0-3 and 7 px in frames 4-7, and a second red 2x2 blob in frames 1 and 2 only."""
    video = np.empty((8, 32, 32, 3), np.uint8)
    video[:] = (120, 120, 120)
    for t in range(8):
        side = 6 if t < 4 else 7
        video[t, 10 : 10 + side, 4 + t : 4 + t + side] = (220, 40, 40)
    video[1:3, 26:28, 26:28] = (220, 40, 40)
    return video


def test_scores_of_a_constructed_video_computed_by_hand():
    """Every MiniBench dimension and the Total from the spec's definitions, on a video built pixel by pixel."""
    video = constructed_video()
    # object pixels per frame (square + blob): the mask is every red pixel (distance to gray > 60)
    areas = np.array([36, 36 + 4, 36 + 4, 36, 49, 49, 49, 49], dtype=np.float64)
    mean = areas.sum() / 8  # 43.5
    std = np.sqrt(((areas - mean) ** 2).sum() / 8)  # population std: sqrt(32.25)
    temporal = 1.0 - std / mean  # 0.8694...
    assert mean == 43.5 and std == pytest.approx(5.6789083458, abs=1e-9)
    single = 6 / 8  # frames 1 and 2 hold two components of >= 4 px
    # centroids: frame 0 square at x 4..9, y 10..15; frame 7 square at x 11..17, y 10..16
    seen = minibench.analyse_video(video)
    assert seen["areas"] == areas.tolist()
    assert seen["displacement"] == pytest.approx([14.0 - 6.5, 13.0 - 12.5])
    assert seen["fill_ratio"] == 1.0 and seen["single_object"] == single

    right = minibench.score_video(video, "a red square moving right on a gray background")
    expected = {"background": 1.0, "colour": 1.0, "shape": 1.0, "motion": 1.0, "single_object": single,
                "temporal_consistency": temporal}
    assert {k: right[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert right["total"] == pytest.approx((4 + single + temporal) / 6, abs=1e-12)  # the mean of the six

    wrong = minibench.score_video(video, "a blue circle moving up on a black background")
    assert [wrong[k] for k in ("background", "colour", "shape", "motion")] == [0.0, 0.0, 0.0, 0.0]
    assert wrong["total"] == pytest.approx((single + temporal) / 6, abs=1e-12)

    prompts = ["a red square moving right on a gray background", "a blue circle moving up on a black background"]
    report = minibench.evaluate([video, video], prompts)
    assert report["overall"]["count"] == 2
    assert report["overall"]["total"] == pytest.approx(((4 + single + temporal) / 6 + (single + temporal) / 6) / 2)
    assert report["overall"]["shape"] == 0.5 and report["overall"]["temporal_consistency"] == pytest.approx(temporal)


def test_temporal_consistency_is_one_minus_the_coefficient_of_variation():
    """1 - std/mean of the mask areas, clipped at 0, and 0 when a frame is empty."""
    video = np.full((4, 32, 32, 3), 15, np.uint8)  # black background
    sides = [4, 6, 8, 10]
    for t, side in enumerate(sides):
        video[t, 8 : 8 + side, 8 : 8 + side] = (240, 240, 240)
    areas = np.array([s * s for s in sides], dtype=np.float64)  # 16, 36, 64, 100
    cv = np.sqrt(((areas - areas.mean()) ** 2).mean()) / areas.mean()
    assert minibench.analyse_video(video)["temporal_consistency"] == pytest.approx(1 - cv, abs=1e-12)
    spread = np.full((4, 32, 32, 3), 15, np.uint8)
    spread[:3, 8, 8] = (240, 240, 240)
    spread[3, 8:28, 8:28] = (240, 240, 240)  # areas 1, 1, 1, 400: std / mean = 1.71, clipped to 0
    assert minibench.analyse_video(spread)["temporal_consistency"] == 0.0
    empty = video.copy()
    empty[2] = 15
    assert minibench.analyse_video(empty)["temporal_consistency"] == 0.0
