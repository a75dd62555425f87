"""The command line itself: every subcommand's --help lists its flags with meaning and default,
--version, `python -m t2v_turbo`, a command group alone shows its help, and --trust-config works on every
command that reads a run config or a student folder."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import t2v_turbo
from t2v_turbo.cli import COMMANDS, READS_CONFIGS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
TRUST_ENV = ("T2V_TURBO_TRUST_CONFIG", "T2V_TURBO_TRUSTED_MODULES")


def command_parser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


@pytest.mark.parametrize("words", [words for words, _, _ in COMMANDS], ids=" ".join)
def test_help_lists_every_flag_with_its_meaning_and_default(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # compared without whitespace: argparse wraps lines
    parser = command_parser(words)
    formatter = parser._get_formatter()
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions, f"t2v-turbo {' '.join(words)} has no options"
    for action in actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help.split()) >= 2, f"{name}: no help text"
        block = "".join(formatter._format_action(action).split())
        assert block in text, f"{name}: not in the printed help"
        has_default = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if action.option_strings and has_default:
            assert "".join(str(action.default).split()) in block, f"{name}: default {action.default!r} not shown"


def test_a_command_group_alone_shows_its_help(capsys):
    assert main(["eval"]) == 2
    out = capsys.readouterr().out
    assert "usage: t2v-turbo eval" in out and "vbench" in out and "minibench" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"t2v-turbo {t2v_turbo.__version__}"


def test_python_dash_m_runs_the_cli_from_any_directory(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "t2v_turbo", "sample", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage: t2v-turbo sample") and "--num-frames" in run.stdout


def test_setup_reads_the_package_version():
    import re

    setup = (REPO / "setup.py").read_text()
    assert 'version=VERSION' in setup and re.search(r"t2v_turbo/__init__\.py", setup)


def test_trust_config_is_offered_by_exactly_the_commands_that_read_configs_or_students():
    names = [" ".join(words) for words, _, _ in COMMANDS]
    assert set(READS_CONFIGS) <= set(names)
    for words, _, _ in COMMANDS:
        options = {o for a in command_parser(words)._actions for o in a.option_strings}
        assert ("--trust-config" in options) == (" ".join(words) in READS_CONFIGS), " ".join(words)


def untrusted_student(folder: Path) -> Path:
    """A student folder whose student.json names a teacher adapter outside the trusted modules."""
    from t2v_turbo.student import StudentMeta

    folder.mkdir()
    meta = StudentMeta(teacher_adapter="collections.OrderedDict", teacher_path="teacher", family="modelscope")
    (folder / "student.json").write_text(json.dumps(dataclasses.asdict(meta)))
    return folder


def command_lines(tmp_path: Path) -> dict[str, list[str]]:
    """Per command that reads a config or a student: a command line whose config (or student.json) names a
    component outside the trusted modules (and fails later, cheaply, once that is allowed)."""
    tiny, reward_model = REPO / "configs" / "tiny.yaml", REPO / "configs" / "miniworld_reward_model.yaml"
    student = untrusted_student(tmp_path / "student")
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": "a red car", "dimension": ["color"]}]))
    return {
        "train": ["train", str(tiny), "optimizer._component_=builtins.dict", "--print-config"],
        "cache": ["cache", str(tiny), "optimizer._component_=builtins.dict", f"data.folder={tmp_path / 'no-videos'}",
                  "--out", str(tmp_path / "cache"), "--device", "cpu"],
        "train-reward": ["train-reward", str(reward_model), "optimizer._component_=builtins.dict", "--print-config"],
        "sample": ["sample", "--checkpoint", str(student), "--prompt", "a cat", "--out", str(tmp_path / "a.mp4"),
                   "--device", "cpu"],
        "export": ["export", str(student), "--format", "lora", "--out", str(tmp_path / "export")],
        "eval vbench": ["eval", "vbench", "--checkpoint", str(student), "--full-info", str(info), "--generate-only",
                        "--out", str(tmp_path / "vbench"), "--device", "cpu"],
    }


@pytest.mark.parametrize("command", [c for c in READS_CONFIGS if c != "quickstart"])  # quickstart: a whole run
def test_trust_config_lets_an_untrusted_component_through_for_that_command_only(command, tmp_path, monkeypatch,
                                                                                 capsys):
    for name in TRUST_ENV:
        monkeypatch.delenv(name, raising=False)
    args = command_lines(tmp_path)[command]
    assert main(args) == 2
    refused = capsys.readouterr().err
    assert "not a trusted module" in refused and "--trust-config" in refused
    code = main(args + ["--trust-config"])
    out, err = capsys.readouterr()
    assert "not a trusted module" not in err, err  # it got past the check: printed, or failed on what follows
    if "--print-config" in args:
        assert code == 0 and "_component_: builtins.dict" in out
    elif "--checkpoint" in args or command == "export":
        assert code == 2 and "'collections.OrderedDict' is not a TeacherAdapter class" in err
    else:
        assert code == 2 and f"dataset folder not found: {tmp_path / 'no-videos'}" in err
    assert all(name not in os.environ for name in TRUST_ENV)  # the flag does not outlive the command
