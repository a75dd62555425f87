"""A real VBench run: mini-world videos scored with vbench's temporal_flickering through our runner,
then aggregated into a labelled partial report. Also the runner's pre-flight checks."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.vbench.aggregate import aggregate_directory, normalize
from eval.vbench.generate import GenerationSettings, generate_suite, load_model_video_fn
from eval.vbench.report import report_directory
from eval.vbench.runner import VBenchSetupError, check_videos_folder, missing_weights, run_vbench
from eval.vbench.suite import load_suite, locate_full_info_json, prompts_for_dimension, write_subset_full_info

ASSETS = Path(__file__).resolve().parents[1] / "miniworld" / "assets"


def _vbench_or_skip():
    try:
        import vbench  # noqa: F401
        import vbench.temporal_flickering  # noqa: F401
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"vbench is not importable ({type(err).__name__}: {err}); CI installs it with .ci/install_vbench.sh")


def _mini_world_model(tmp_path):
    """(student folder or None, teacher path): the shipped student, else the shipped teacher, else the tiny model."""
    students = sorted(p.parent for p in ASSETS.rglob("student.json")) if ASSETS.is_dir() else []
    if students:
        return {"checkpoint": students[0]}, "mini-world student"
    teachers = sorted(p.parent for p in ASSETS.rglob("model_index.json")) if ASSETS.is_dir() else []
    if teachers:
        return {"teacher": teachers[0]}, "mini-world teacher"
    from t2v_turbo.testing import build_tiny_diffusers_t2v

    return {"teacher": build_tiny_diffusers_t2v(tmp_path / "tiny_t2v")}, "tiny diffusers teacher"


def _our_flicker_score(path):
    """(255 - mean |f_i - f_{i+1}|) / 255, frames decoded with PyAV (independent of VBench's cv2 path)."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="bgr24").astype(np.float32) for f in c.decode(video=0)]
    diffs = [np.mean(np.abs(a - b)) for a, b in zip(frames[:-1], frames[1:])]
    return (255.0 - float(np.mean(diffs))) / 255.0


def test_generate_and_score_temporal_flickering(tmp_path):
    _vbench_or_skip()
    full = locate_full_info_json()
    prompts = prompts_for_dimension(load_suite(full, dimensions="temporal_flickering"), "temporal_flickering")[:1]
    info = write_subset_full_info(prompts, tmp_path / "suite.json", full)
    suite = load_suite(info, dimensions="temporal_flickering")
    assert suite.prompts == prompts

    model_kwargs, which = _mini_world_model(tmp_path)
    settings = GenerationSettings(num_frames=6, height=32, width=32, fps=8, num_samples=5, flicker_samples=5)
    video_fn, record = load_model_video_fn(settings, num_inference_steps=2, guidance_scale=7.5, device="cpu", **model_kwargs)
    out = tmp_path / "run"
    summary = generate_suite(video_fn, suite, out, settings, model=record, process_index=0, num_processes=1, progress=False)
    assert summary.generated == 5, which
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["sha256"] and len(manifest["videos"]) == 5

    cache = tmp_path / "empty_vbench_cache"  # temporal_flickering needs no weights
    assert missing_weights(["temporal_flickering"], cache) == {}
    record = run_vbench(out / "videos", out / "results", ["temporal_flickering"], full_info=info, name="mini",
                        device="cpu", cache_dir=cache, extra_info={"model": which})
    data = json.loads(record.results_path.read_text())
    score, per_video = data["temporal_flickering"]
    assert len(per_video) == 5
    assert {Path(v["video_path"]).name for v in per_video} == {f"{p}-{i}.mp4" for p in prompts for i in range(5)}
    ours = [_our_flicker_score(v["video_path"]) for v in per_video]
    assert np.allclose([v["video_results"] for v in per_video], ours, atol=2e-3)
    assert score == pytest.approx(np.mean(ours), abs=2e-3)
    assert 0.0 < score <= 1.0
    assert json.loads(record.info_path.read_text())["vbench_version"] == "0.1.5"

    result, paths = report_directory(out / "results", label=which)
    assert result.raw == {"temporal_flickering": pytest.approx(score)}
    assert result.total is None and result.quality is None and len(result.missing) == 15
    assert result.partial_quality == pytest.approx(normalize("temporal_flickering", score))
    md = paths["markdown"].read_text()
    assert "PARTIAL" in md and "(1/16 dimensions)" in md and "VBench 0.1.5" in md
    assert f"| temporal_flickering | Quality | {100 * score:.2f} |" in md
    assert paths["chart"].stat().st_size > 5000 and paths["chart"].read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "report_md_for_docs.md").write_text(md)


@pytest.mark.slow  # > 10 s on 2 CPU cores
def test_separate_interpreter_driver_gives_the_same_scores(tmp_path):
    """--vbench-python: the driver script in another interpreter (here the same python) scores the same videos."""
    _vbench_or_skip()
    full = locate_full_info_json()
    prompt = prompts_for_dimension(load_suite(full, dimensions="temporal_flickering"), "temporal_flickering")[0]
    info = write_subset_full_info([prompt], tmp_path / "suite.json", full)
    suite = load_suite(info, dimensions="temporal_flickering")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(1, 16, 16, 3))

    def flicker(prompts, seeds):  # a known signal: static image plus seeded noise of growing size
        return [np.clip(base + np.random.default_rng(s).integers(-20, 20, size=(6, 16, 16, 3)), 0, 255).astype(np.uint8) for s in seeds]

    settings = GenerationSettings(num_frames=6, height=16, width=16, fps=8, num_samples=5, flicker_samples=5)
    generate_suite(flicker, suite, tmp_path / "run", settings, process_index=0, num_processes=1, progress=False)
    a = run_vbench(tmp_path / "run/videos", tmp_path / "in_process", ["temporal_flickering"], info, name="a", device="cpu", cache_dir=tmp_path / "c")
    b = run_vbench(tmp_path / "run/videos", tmp_path / "driver", ["temporal_flickering"], info, name="b", device="cpu",
                   cache_dir=tmp_path / "c", vbench_python=sys.executable)
    sa = json.loads(a.results_path.read_text())["temporal_flickering"][0]
    sb = json.loads(b.results_path.read_text())["temporal_flickering"][0]
    assert sa == pytest.approx(sb, abs=1e-9) and sa < 0.99  # noisy frames flicker
    assert b.vbench_version == "0.1.5"
    assert aggregate_directory(tmp_path / "driver").raw["temporal_flickering"] == pytest.approx(sb)


def test_missing_weights_are_listed_with_expected_paths(tmp_path):
    missing = missing_weights(["temporal_flickering", "subject_consistency", "dynamic_degree"], tmp_path)
    assert set(missing) == {"subject_consistency", "dynamic_degree"}
    assert tmp_path / "raft_model/models/raft-things.pth" in missing["dynamic_degree"]
    (tmp_path / "raft_model/models").mkdir(parents=True)
    (tmp_path / "raft_model/models/raft-things.pth").write_bytes(b"x")
    assert "dynamic_degree" not in missing_weights(["dynamic_degree"], tmp_path)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a cat-0.mp4").write_bytes(b"")
    with pytest.raises(VBenchSetupError, match=r"subject_consistency: .*dino_vitbase16_pretrain\.pth"):
        run_vbench(videos, tmp_path / "out", ["subject_consistency"], full_info=tmp_path / "x.json", cache_dir=tmp_path, device="cpu")


def test_videos_folder_must_hold_only_videos(tmp_path):
    (tmp_path / "a-0.mp4").write_bytes(b"")
    assert check_videos_folder(tmp_path) == ".mp4"
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(VBenchSetupError, match="manifest.json"):
        check_videos_folder(tmp_path)
