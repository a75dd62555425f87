"""VBench aggregation against the published leaderboard numbers, and partial reports."""

import json
from importlib import resources

import pytest

from eval.vbench.aggregate import (
    DIMENSIONS,
    QUALITY_DIMENSIONS,
    SEMANTIC_DIMENSIONS,
    aggregate,
    aggregate_directory,
    collect_eval_results,
    normalize,
)

PUBLISHED = json.loads(resources.files("eval.vbench").joinpath("data/vbench_published.json").read_text())
MODELS = sorted(PUBLISHED)


def test_dimension_groups():
    assert len(DIMENSIONS) == 16 and len(QUALITY_DIMENSIONS) == 7 and len(SEMANTIC_DIMENSIONS) == 9
    assert set(QUALITY_DIMENSIONS).isdisjoint(SEMANTIC_DIMENSIONS)


@pytest.mark.parametrize("model", MODELS)
def test_reproduces_published_aggregates(model):
    entry = PUBLISHED[model]
    result = aggregate(entry["dimensions_percent"], scale=100)
    assert result.complete and result.missing == []
    got = {"total": result.total, "quality": result.quality, "semantic": result.semantic}
    assert entry["published_percent"], model
    for key, published in entry["published_percent"].items():
        assert 100 * got[key] == pytest.approx(published, abs=0.01), (model, key, 100 * got[key], published)


def test_every_published_model_has_all_dimensions():
    for model, entry in PUBLISHED.items():
        assert set(entry["dimensions_percent"]) == set(DIMENSIONS), model


def test_normalisation_constants():
    # min maps to 0 and max to the weight; dynamic_degree has weight 0.5
    assert normalize("temporal_flickering", 0.6293) == pytest.approx(0.0)
    assert normalize("temporal_flickering", 1.0) == pytest.approx(1.0)
    assert normalize("dynamic_degree", 1.0) == pytest.approx(0.5)
    assert normalize("scene", 0.8222) == pytest.approx(1.0)
    # no clipping: a score below min goes negative
    assert normalize("subject_consistency", 0.0) < 0


def test_missing_dimension_gives_labelled_partial_not_a_wrong_total():
    scores = dict(PUBLISHED["VideoCrafter2"]["dimensions_percent"])
    del scores["scene"]
    result = aggregate(scores, scale=100)
    assert not result.complete
    assert result.missing == ["scene"]
    assert result.total is None and result.semantic is None
    # Quality has all its dimensions and stays exact
    assert 100 * result.quality == pytest.approx(82.2, abs=0.01)
    # the partial semantic score is the weighted mean over the 8 dims present, not a zero-filled sum
    assert result.partial_semantic is not None
    zero_filled = sum(normalize(d, scores[d] / 100) for d in SEMANTIC_DIMENSIONS if d != "scene") / 9
    assert result.partial_semantic != pytest.approx(zero_filled)
    assert result.to_json()["percent"]["total"] is None


def test_single_dimension_run():
    result = aggregate({"temporal_flickering": 0.97})
    assert result.missing == [d for d in DIMENSIONS if d != "temporal_flickering"]
    assert result.quality is None and result.total is None
    assert result.partial_quality == pytest.approx(normalize("temporal_flickering", 0.97))
    assert result.partial_semantic is None


def test_unknown_dimension_and_bad_values_are_named():
    with pytest.raises(KeyError, match="temporal_flicker"):
        aggregate({"temporal_flicker": 0.9})
    with pytest.raises(ValueError, match="color"):
        aggregate({"color": float("nan")})


def test_collect_eval_results_merges_files_newest_wins(tmp_path):
    import os

    a = tmp_path / "a_eval_results.json"
    b = tmp_path / "b_eval_results.json"
    a.write_text(json.dumps({"temporal_flickering": [0.9, []], "color": [0.5, [{"video_path": "x", "video_results": 0.5}]]}))
    b.write_text(json.dumps({"temporal_flickering": [0.95, []]}))
    os.utime(a, (1, 1))
    os.utime(b, (2, 2))
    (tmp_path / "unrelated.json").write_text("{}")
    scores, sources = collect_eval_results(tmp_path)
    assert scores == {"temporal_flickering": 0.95, "color": 0.5}
    assert sources == {"temporal_flickering": "b_eval_results.json", "color": "a_eval_results.json"}
    result = aggregate_directory(tmp_path)
    assert result.raw["temporal_flickering"] == 0.95 and "scene" in result.missing


def test_collect_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_results"):
        collect_eval_results(tmp_path)
    bad = tmp_path / "x_eval_results.json"
    bad.write_text(json.dumps({"colour": [0.5, []]}))
    with pytest.raises(ValueError, match="x_eval_results.json.*colour"):
        collect_eval_results(tmp_path)


def test_aggregate_only_cli_writes_report(tmp_path, capsys):
    """`t2v-turbo eval vbench --aggregate-only DIR --compare DIR2` on results produced elsewhere."""
    from t2v_turbo.cli import main

    for name, model in (("vc2", "VideoCrafter2"), ("turbo", "T2V-Turbo (VC2, 4 steps)")):
        run = tmp_path / name / "results"
        run.mkdir(parents=True)
        dims = PUBLISHED[model]["dimensions_percent"]
        quality = {d: [v / 100, []] for d, v in dims.items() if d in QUALITY_DIMENSIONS}
        semantic = {d: [v / 100, []] for d, v in dims.items() if d in SEMANTIC_DIMENSIONS}
        (run / "q_eval_results.json").write_text(json.dumps(quality))
        if name == "turbo":
            semantic.pop("color")  # a partial second run
        (run / "s_eval_results.json").write_text(json.dumps(semantic))
    assert main(["eval", "vbench", "--aggregate-only", str(tmp_path / "vc2"), "--compare", str(tmp_path / "turbo"), "--no-references"]) == 0
    md = (tmp_path / "vc2" / "results" / "vbench_report.md").read_text()
    assert "complete (16/16 dimensions) for **vc2**" in md
    assert "| **Total** | | **80.44** | — |" in md
    assert "Compared run **turbo** is partial too; missing: color" in md
    assert "| **Total** | | **80.44** | — |" in capsys.readouterr().out  # printed too
    scores = json.loads((tmp_path / "vc2" / "results" / "vbench_scores.json").read_text())
    assert scores["result"]["percent"]["total"] == pytest.approx(80.44, abs=0.01)
    assert scores["compare"]["result"]["percent"]["total"] is None
    assert (tmp_path / "vc2" / "results" / "vbench_report.png").read_bytes()[:4] == b"\x89PNG"
