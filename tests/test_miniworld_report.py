"""The mini-world benches' helpers: the evaluation prompt subset and the reuse check of finished runs."""

import pytest

from miniworld import world
from miniworld.report import check_reusable_run, prompt_subset


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
