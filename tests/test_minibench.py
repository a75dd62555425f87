"""MiniBench on ground truth (the ceiling) and on deliberately wrong videos."""

import json

import numpy as np

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
