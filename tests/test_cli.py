"""The command line itself: every subcommand's --help lists its flags with meaning and default,
--version, `python -m t2v_turbo`, a command group alone shows its help."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import t2v_turbo
from t2v_turbo.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


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
