"""The mini-world benches' and quick start's helpers: the evaluation prompt subset, the reuse check of finished
runs, the curve smoothing, the labelled sample sheet's verdicts and the ablation's statistics over seeds."""

import numpy as np
import pytest
from PIL import Image

from miniworld import minibench, world
from miniworld.report import (
    check_reusable_run,
    failed_attributes,
    plot_minibench_curve,
    prompt_subset,
    run_commands,
    save_sample_grid,
    seed_statistics,
    seeds_table,
    smooth,
)


def test_prompt_subset_spans_the_list_in_its_order():
    prompts = world.held_out_captions()  # ordered by composition, then motion, then background
    subset = prompt_subset(prompts, 15)
    assert len(set(subset)) == 15 and set(subset) <= set(prompts)
    assert subset == [p for p in prompts if p in subset]  # the list's order kept
    assert subset == prompt_subset(prompts, 15)  # a fixed draw
    assert {p.split(" on a ")[1] for p in subset} == {"black background", "gray background", "teal background"}
    assert len({p.split(" moving")[0].split(" staying")[0] for p in subset}) > 1  # not the first composition only
    assert prompt_subset(prompts, None) == prompts and prompt_subset(prompts, 100) == prompts


def test_a_finished_run_of_another_length_is_not_reused(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  max_steps: 20\n")
    check_reusable_run(tmp_path, 20)
    with pytest.raises(SystemExit, match=r"max_steps=20, not the 30 asked for"):
        check_reusable_run(tmp_path, 30)
    with pytest.raises(SystemExit, match="max_steps=None"):
        check_reusable_run(tmp_path / "missing", 20)


def test_asset_fingerprint_names_each_weight_file_by_its_sha256_prefix(tmp_path):
    import hashlib

    from miniworld.report import asset_fingerprint

    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "student.safetensors").write_bytes(b"weights")
    (tmp_path / "student" / "student.json").write_text("{}")
    assert asset_fingerprint(tmp_path) == {"student/student.safetensors": hashlib.sha256(b"weights").hexdigest()[:12]}


def test_smooth_is_the_bias_corrected_moving_average():
    np.testing.assert_allclose(smooth([3.0, 3.0, 3.0]), [3.0, 3.0, 3.0])  # a constant stays itself
    # m1 = 0.1 * 1 -> 1; m2 = 0.9 * 0.1 + 0.1 * 3 = 0.39, corrected by 1 - 0.81 = 0.19
    np.testing.assert_allclose(smooth([1.0, 3.0]), [1.0, 0.39 / 0.19])
    np.testing.assert_allclose(smooth([1.0, 3.0], decay=0.0), [1.0, 3.0])


def test_failed_attributes_name_what_a_video_gets_wrong():
    caption = "a red circle moving left on a black background"
    assert failed_attributes(world.sample_for_caption(caption).video, caption) == []
    other = world.sample_for_caption("a blue circle moving up on a black background").video
    assert failed_attributes(other, caption) == ["colour", "motion"]


def test_sample_sheet_has_a_strip_per_model_and_prompt(tmp_path):
    prompts = ["a red circle moving left on a black background", "a green square staying still on a teal background"]
    truth = np.stack([world.sample_for_caption(p).video for p in prompts])
    one, two = save_sample_grid(tmp_path / "a", {"ground truth": truth}, prompts), \
        save_sample_grid(tmp_path / "b", {"ground truth": truth, "copy": truth[::-1]}, prompts)
    assert [p.name for p in one] == ["a.gif", "a.png"]
    assert Image.open(two[1]).height > Image.open(one[1]).height  # one more strip per prompt


def _report(total: float, motion: float, held_out_total: float | None) -> dict:
    overall = {**{k: 0.5 for k in minibench.DIMENSIONS}, "motion": motion, "total": total}
    return {"overall": overall, "seen": {**overall, "total": total + 0.1},
            "held_out": {**{k: None for k in overall}, "total": held_out_total}}


def test_seed_statistics_are_the_mean_and_sample_std_over_seeds():
    stats = seed_statistics([_report(0.7, 0.2, 0.6), _report(0.8, 0.4, 0.7), _report(0.9, 0.9, 0.8)])
    mean, std = stats["overall"]["total"]
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # sqrt(((-0.1)^2 + 0 + 0.1^2) / (3 - 1))
    mean, std = stats["overall"]["motion"]
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert stats["seen"]["total"][0] == pytest.approx(0.9)
    assert set(stats["held_out"]) == {"total"}  # the dimensions no report has are left out
    assert seed_statistics([_report(0.7, 0.2, 0.6)])["overall"]["total"] == (pytest.approx(0.7), 0.0)


def test_seeds_table_writes_mean_plus_minus_std_under_minibench_columns():
    table = seeds_table({"VCM": seed_statistics([_report(0.7, 0.2, None), _report(0.9, 0.4, None)])})
    header, rule, row = table.strip().splitlines()
    assert header == minibench.TABLE_HEADER.splitlines()[0]
    cells = [c.strip() for c in row.strip("| ").split("|")]
    assert cells[0] == "VCM" and len(cells) == len(header.strip("| ").split("|"))
    assert cells[4] == "0.300 ± 0.141"  # motion: mean 0.3, std 0.1 * sqrt(2)
    assert cells[7] == "0.800 ± 0.141" and cells[8] == "0.900 ± 0.141" and cells[9] == "-"


def test_minibench_curve_is_written_as_an_image(tmp_path):
    points = [{"step": s, **seed_statistics([_report(0.6 + s / 1000, 0.2, None), _report(0.7, 0.3, None)])["overall"]}
              for s in (50, 100, 150)]
    path = plot_minibench_curve(points, tmp_path / "curve.png")
    assert Image.open(path).size[0] > 100


def _ablation_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "miniworld_ablation.py"
    spec = importlib.util.spec_from_file_location("miniworld_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_variants_are_valid_run_configs_that_differ_only_in_rewards(tmp_path):
    from distill.trainer import resolve_run_config
    from t2v_turbo.config import load_config

    ablation = _ablation_module()
    config = ablation.REPO / "configs" / "miniworld.yaml"
    rewards = load_config(config, [])["rewards"]
    shipped = {key: resolve_run_config(load_config(config, ablation.variant_overrides(key, rewards, None)))
               for key in ablation.KEYS.values()}
    assert {k: [(r["name"], r["weight"]) for r in c["rewards"]] for k, c in shipped.items()} == {
        "vcm": [], "img": [("miniworld-image", 1.0)], "vid": [("miniworld-video", 2.0)],
        "both": [("miniworld-image", 1.0), ("miniworld-video", 2.0)]}
    assert all({k: v for k, v in c.items() if k != "rewards"} == {k: v for k, v in shipped["vcm"].items() if k != "rewards"}
               for c in shipped.values())
    assert [r["args"] for r in shipped["both"]["rewards"]] == [r.get("args", {}) for r in rewards]  # the config's own
    built = resolve_run_config(load_config(config, ablation.variant_overrides("both", rewards, tmp_path)))
    assert built["teacher"]["path"] == str(tmp_path / "teacher")
    assert [r["args"]["checkpoint"] for r in built["rewards"]] == [str(tmp_path / "image_reward"), str(tmp_path / "video_reward")]
    with pytest.raises(ValueError, match="needs the config's rewards"):
        ablation.variant_overrides("both", rewards[:1], None)


def test_ablation_claims_compare_means_with_the_seed_spread():
    ablation = _ablation_module()

    def stats(total, motion, motion_std, colour=0.9, shape=0.6):
        return {"overall": {"total": (total, 0.01), "motion": (motion, motion_std), "colour": (colour, 0.0),
                            "shape": (shape, 0.0)}}
    teacher = {"overall": {"total": 0.80}}
    measured = {"vcm": stats(0.75, 0.30, 0.02), "img": stats(0.78, 0.30, 0.02, colour=0.95),
                "vid": stats(0.79, 0.36, 0.02), "both": stats(0.805, 0.37, 0.03)}
    claims = ablation.claims(measured, teacher, 21.0)
    assert claims["vcm_over_teacher"]["value"] == pytest.approx(0.75 / 0.80) and claims["vcm_over_teacher"]["met"]
    assert claims["t2v_turbo_minus_teacher"]["met"]
    gain = claims["video_reward_motion_gain_over_vcm"]
    assert gain["value"] == pytest.approx(0.06) and gain["two_std"] == pytest.approx(0.04) and gain["met"]
    assert claims["image_reward_colour_plus_shape_gain_over_vcm"]["value"] == pytest.approx(0.05)
    assert claims["t2v_turbo_minus_best_other_student"]["met"] and claims["speedup_vs_teacher"]["met"]
    measured["vid"] = stats(0.79, 0.33, 0.02)  # a gain of 0.03 is within twice the seeds' spread
    assert not ablation.claims(measured, teacher, 19.0)["video_reward_motion_gain_over_vcm"]["met"]
    assert not ablation.claims(measured, teacher, 19.0)["speedup_vs_teacher"]["met"]


def test_run_commands_runs_every_job_into_its_log_and_names_a_failure(tmp_path):
    import sys

    def echo(text, code=0):
        return [sys.executable, "-c", f"print({text!r}); raise SystemExit({code})"]

    seconds = run_commands({"a": (echo("one"), tmp_path / "a" / "a.log"), "b": (echo("two"), tmp_path / "b.log"),
                            "c": (echo("three"), tmp_path / "c.log")}, parallel=2)
    assert sorted(seconds) == ["a", "b", "c"] and all(s >= 0 for s in seconds.values())
    assert [(tmp_path / p).read_text() for p in ("a/a.log", "b.log", "c.log")] == ["one\n", "two\n", "three\n"]
    with pytest.raises(RuntimeError, match=r"bad failed \(exit 3\); see .*bad\.log"):
        run_commands({"bad": (echo("no", 3), tmp_path / "bad.log")}, parallel=1)


def test_ablation_rerun_over_trained_students_reports_their_training_seconds(tmp_path):
    """A rerun trains nothing when every student is there, and still reports each job's seconds from the file its
    first run left beside the log (a job without one is left out, not reported as 0)."""
    ablation = _ablation_module()
    jobs = [(0, "vcm"), (0, "both"), (1, "vcm")]
    for seed, key in jobs:
        (ablation.run_dir(tmp_path, seed, key) / "student").mkdir(parents=True)
        (ablation.run_dir(tmp_path, seed, key) / "student" / "student.json").write_text("{}")
    ablation.run_dir(tmp_path, 0, "vcm").with_suffix(".seconds").write_text("61.5\n")
    ablation.run_dir(tmp_path, 0, "both").with_suffix(".seconds").write_text("90.25\n")
    seconds = ablation.train_all(tmp_path, jobs, 250, {job: [] for job in jobs}, parallel=2)
    assert seconds == {(0, "vcm"): 61.5, (0, "both"): 90.25}
