"""Video names match VBench's loader rule for tricky prompts (quotes, commas, unicode, case pairs, the longest prompt)."""

import json

import pytest

from eval.vbench.naming import (
    MAX_NAME_BYTES,
    CaseCollisionError,
    case_collisions,
    check_case_collisions,
    expected_names,
    is_case_sensitive,
    prompt_from_filename,
    video_filename,
)
from eval.vbench.suite import load_suite

LONGEST_SUITE_PROMPT = (
    "Snow rocky mountains peaks canyon. snow blanketed rocky mountains surround and shadow deep canyons. "
    "the canyons twist and bend through the high elevated mountain peaks, featuring a steady and smooth perspective"
)
TRICKY = [
    "a person's dog, running (fast) on the beach.",
    'a "quoted" cat',
    "A tranquil tableau of at the edge of the Arabian Desert, the ancient city of Petra beckoned with its enigmatic rock-carved façades",
    "一只猫在弹钢琴",
    "a fantasy landscape",
    "A fantasy landscape",
    "prompt ending in digits-12",
    LONGEST_SUITE_PROMPT,
]


def _vbench():
    try:
        import vbench  # noqa: F401
        from vbench import VBench
        from vbench.utils import get_prompt_from_filename
    except Exception as err:  # noqa: BLE001 - any import failure means "use the documented rule"
        return None, None, err
    return VBench, get_prompt_from_filename, None


def test_names_are_prompt_dash_index_mp4():
    assert video_filename("a cat", 3) == "a cat-3.mp4"
    assert expected_names("a, b", 2) == ["a, b-0.mp4", "a, b-1.mp4"]
    assert len(LONGEST_SUITE_PROMPT.encode()) == 210
    assert len(video_filename(LONGEST_SUITE_PROMPT, 24).encode()) < MAX_NAME_BYTES


def test_bad_prompts_are_refused_with_the_prompt_named():
    with pytest.raises(ValueError, match="a/b"):
        video_filename("a/b", 0)
    with pytest.raises(ValueError, match="bytes"):
        video_filename("x" * 250, 0)


def test_standard_loader_finds_every_tricky_name(tmp_path):
    """Write files named by us; VBench's own standard-mode loader must find all 5 per prompt."""
    VBench, _, err = _vbench()
    videos = tmp_path / "videos"
    videos.mkdir()
    for prompt in TRICKY:
        for name in expected_names(prompt):
            (videos / name).write_bytes(b"")
    assert len(list(videos.iterdir())) == 5 * len(TRICKY)  # the case pair is two files here (Linux)
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": p, "dimension": ["temporal_flickering"]} for p in TRICKY]), encoding="utf-8")
    if VBench is None:
        pytest.skip(f"vbench is not importable ({err}); see .ci/install_vbench.sh")
    out = VBench("cpu", str(info), str(tmp_path / "out")).build_full_info_json(
        str(videos), "naming", ["temporal_flickering"]
    )
    found = {row["prompt_en"]: row["video_list"] for row in json.loads(open(out, encoding="utf-8").read())}
    for prompt in TRICKY:
        assert [p.rsplit("/", 1)[1] for p in found[prompt]] == expected_names(prompt), prompt


@pytest.mark.parametrize("prompt", TRICKY)
def test_custom_mode_rule_round_trips(prompt):
    for i in (0, 4, 24):
        assert prompt_from_filename(video_filename(prompt, i)) == prompt


@pytest.mark.parametrize("prompt", TRICKY)
def test_vbench_custom_mode_reads_our_names(prompt):
    """VBench's own custom-mode rule gives back each prompt (skipped, with the reason, without vbench)."""
    _, get_prompt_from_filename, err = _vbench()
    if get_prompt_from_filename is None:
        pytest.skip(f"vbench is not importable ({err}); see .ci/install_vbench.sh")
    for i in (0, 4, 24):
        assert get_prompt_from_filename(video_filename(prompt, i)) == prompt


def test_real_suite_names_are_valid_and_unique():
    try:
        suite = load_suite()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    names = [video_filename(p, 24) for p in suite.prompts]
    assert len(set(names)) == len(names) == 944
    assert max(len(n.encode()) for n in names) == 210 + len("-24.mp4")
    assert case_collisions(suite.prompts) == [["A fantasy landscape", "a fantasy landscape"]]


def test_case_collision_handling(tmp_path):
    prompts = ["a cat", "a fantasy landscape", "A fantasy landscape"]
    assert is_case_sensitive(tmp_path) is True  # Linux tmp; the probe leaves nothing behind
    assert list(tmp_path.iterdir()) == []
    assert check_case_collisions(prompts, tmp_path) == [["A fantasy landscape", "a fantasy landscape"]]
    with pytest.raises(CaseCollisionError, match="case-insensitive.*'A fantasy landscape' / 'a fantasy landscape'"):
        check_case_collisions(prompts, tmp_path, case_sensitive=False)
    assert check_case_collisions(["a cat", "a dog"], tmp_path, case_sensitive=False) == []
