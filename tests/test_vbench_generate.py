"""Suite generation: names, seeds, manifest, resume (skip complete, redo truncated), atomic writes, shards."""

import json

import numpy as np
import pytest

from eval.vbench.generate import (
    GenerationSettings,
    build_jobs,
    generate_suite,
    seed_for,
    shard_jobs,
    to_uint8_videos,
)
from eval.vbench.naming import CaseCollisionError, expected_names
from eval.vbench.suite import load_suite
from t2v_turbo.video_io import count_frames, write_mp4

ROWS = [
    {"prompt_en": "In a still frame, a stop sign", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a cat's toy, red", "dimension": ["color"], "auxiliary_info": {"color": {"color": "red"}}},
    {"prompt_en": "a cat's toy, red", "dimension": ["aesthetic_quality"]},
    {"prompt_en": "façade at night", "dimension": ["aesthetic_quality", "scene"]},
]
SETTINGS = GenerationSettings(num_frames=4, height=16, width=16, fps=8, num_samples=2, flicker_samples=3, base_seed=7)


class SeededVideos:
    """A deterministic stand-in model: each video is a function of its seed; records every call."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail_on = fail_on

    def __call__(self, prompts, seeds):
        out = []
        for p, s in zip(prompts, seeds):
            if p == self.fail_on:
                raise RuntimeError("model crashed")
            self.calls.append((p, s))
            rng = np.random.default_rng(s)
            out.append(rng.integers(0, 255, size=(4, 16, 16, 3), dtype=np.uint8))
        return out


@pytest.fixture
def suite(tmp_path):
    info = tmp_path / "info.json"
    info.write_text(json.dumps(ROWS), encoding="utf-8")
    return load_suite(info, dimensions="all")


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_suite_merges_duplicate_prompts_and_counts(suite):
    assert suite.prompts == ["In a still frame, a stop sign", "a cat's toy, red", "façade at night"]
    assert suite.entries[1].dimensions == ["color", "aesthetic_quality"]
    jobs = build_jobs(suite, SETTINGS)
    assert len(jobs) == 3 + 2 + 2  # the flicker prompt gets flicker_samples
    assert len({j.seed for j in jobs}) == len(jobs)
    assert jobs[0].seed == seed_for("In a still frame, a stop sign", 0, 7) != seed_for("In a still frame, a stop sign", 0, 8)


def test_generate_writes_named_videos_and_manifest(tmp_path, suite):
    model = SeededVideos()
    out = tmp_path / "run"
    summary = generate_suite(model, suite, out, SETTINGS, model={"kind": "test"}, process_index=0, num_processes=1, progress=False)
    assert summary.generated == 7 and summary.skipped == 0
    expected = sorted(n for e in suite.entries for n in expected_names(e.prompt, 3 if "temporal_flickering" in e.dimensions else 2))
    assert _names(out / "videos") == expected
    assert _names(out) == [".claims", ".partial", "manifest.json", "videos"]
    assert _names(out / ".partial") == []
    for name in expected:
        assert count_frames(out / "videos" / name) == 4
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["fps"] == 8 and manifest["model"] == {"kind": "test"}
    assert "torch" in manifest["versions"] and "vbench" in manifest["versions"]
    seeds = {(v["prompt"], v["index"]): v["seed"] for v in manifest["videos"]}
    assert len(seeds) == 7
    assert sorted(model.calls, key=lambda c: c[1]) == sorted(((p, s) for (p, _), s in seeds.items()), key=lambda c: c[1])


def test_resume_skips_complete_and_redoes_truncated(tmp_path, suite):
    out = tmp_path / "run"
    generate_suite(SeededVideos(), suite, out, SETTINGS, process_index=0, num_processes=1, progress=False)
    videos = out / "videos"
    untouched = videos / "façade at night-1.mp4"
    before = untouched.read_bytes()
    truncated = videos / "a cat's toy, red-0.mp4"
    truncated.write_bytes(truncated.read_bytes()[:300])
    short = videos / "In a still frame, a stop sign-2.mp4"
    write_mp4(short, np.zeros((2, 16, 16, 3), np.uint8), fps=8)  # decodes, but 2 frames of 4
    (videos / "a cat's toy, red-1.mp4").unlink()

    again = SeededVideos()
    summary = generate_suite(again, suite, out, SETTINGS, process_index=0, num_processes=1, progress=False)
    assert (summary.skipped, summary.redone, summary.generated) == (4, 2, 3)
    assert sorted(p for p, _ in again.calls) == ["In a still frame, a stop sign", "a cat's toy, red", "a cat's toy, red"]
    assert count_frames(truncated) == 4 and count_frames(short) == 4
    assert untouched.read_bytes() == before
    # a third pass has nothing to do
    third = SeededVideos()
    assert generate_suite(third, suite, out, SETTINGS, process_index=0, num_processes=1, progress=False).generated == 0
    assert third.calls == []


def test_a_crash_leaves_no_half_written_video(tmp_path, suite):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crashed"):
        generate_suite(SeededVideos(fail_on="façade at night"), suite, out, SETTINGS, process_index=0, num_processes=1, progress=False)
    names = _names(out / "videos")
    assert names and all(n.endswith(".mp4") for n in names)
    assert not any(n.startswith("façade") for n in names)
    assert all(count_frames(out / "videos" / n) == 4 for n in names)


def test_shards_partition_the_jobs(tmp_path, suite):
    jobs = build_jobs(suite, SETTINGS)
    parts = [shard_jobs(jobs, i, 3) for i in range(3)]
    assert sorted(j.filename for p in parts for j in p) == sorted(j.filename for j in jobs)
    assert sum(len(p) for p in parts) == len(jobs)
    out = tmp_path / "run"
    for i in range(3):
        generate_suite(SeededVideos(), suite, out, SETTINGS, process_index=i, num_processes=3, progress=False)
    assert len(_names(out / "videos")) == len(jobs)
    with pytest.raises(ValueError, match="process_index 3"):
        shard_jobs(jobs, 3, 3)


def test_augmented_prompts_sample_but_keep_names(tmp_path):
    info = tmp_path / "info.json"
    info.write_text(json.dumps(ROWS), encoding="utf-8")
    suite = load_suite(info, dimensions=["color"], augmented={"a cat's toy, red": "a red toy of a cat, 4k"})
    model = SeededVideos()
    generate_suite(model, suite, tmp_path / "run", SETTINGS, process_index=0, num_processes=1, progress=False)
    assert {p for p, _ in model.calls} == {"a red toy of a cat, 4k"}
    assert _names(tmp_path / "run" / "videos") == ["a cat's toy, red-0.mp4", "a cat's toy, red-1.mp4"]
    with pytest.raises(KeyError, match="not a prompt"):
        load_suite(info, dimensions=["color"], augmented={"not a prompt": "x"})


def test_changed_settings_refuse_to_resume(tmp_path, suite):
    out = tmp_path / "run"
    generate_suite(SeededVideos(), suite, out, SETTINGS, model={"hash": "a"}, process_index=0, num_processes=1, progress=False)
    with pytest.raises(ValueError, match="differs in: model"):
        generate_suite(SeededVideos(), suite, out, SETTINGS, model={"hash": "b"}, process_index=0, num_processes=1, progress=False)


def test_case_pair_refused_on_case_insensitive_folder_before_writing(tmp_path):
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": "a fantasy landscape", "dimension": ["scene"]},
                                {"prompt_en": "A fantasy landscape", "dimension": ["scene"]}]), encoding="utf-8")
    suite = load_suite(info)
    with pytest.raises(CaseCollisionError, match="fantasy"):
        generate_suite(SeededVideos(), suite, tmp_path / "run", SETTINGS, process_index=0, num_processes=1, case_sensitive=False, progress=False)
    assert _names(tmp_path / "run" / "videos") == []
    # on this (case-sensitive) folder both variants get their own files
    generate_suite(SeededVideos(), suite, tmp_path / "run", SETTINGS, process_index=0, num_processes=1, progress=False)
    assert len(_names(tmp_path / "run" / "videos")) == 4


def test_to_uint8_videos_layout():
    x = np.zeros((2, 3, 4, 6, 8), np.float32)
    x[:, 0] = 1.0
    x[:, 2] = -1.0
    vids = to_uint8_videos(x)
    assert len(vids) == 2 and vids[0].shape == (4, 6, 8, 3) and vids[0].dtype == np.uint8
    assert vids[0][0, 0, 0].tolist() == [255, 128, 0]
