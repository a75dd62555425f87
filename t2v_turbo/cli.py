"""The ``t2v-turbo`` command line (also ``python -m t2v_turbo``).

Each subcommand lives in its own module under ``t2v_turbo.commands`` and defines
``add_arguments(parser)`` and ``run(args) -> int``. The modules import only the standard library
(and yaml) at top level, so the whole parser, with every subcommand's options, is built before
parsing: ``t2v-turbo sample --help`` lists every flag with its default, and the heavy imports
(torch, diffusers) happen inside ``run``.

Commands that read a run config or a student folder's ``student.json`` (``READS_CONFIGS``) take
``--trust-config``: while the command runs, a ``_component_`` (or a student's ``teacher_adapter``) may
name anything importable, not only the trusted modules (``t2v_turbo.config.trusted_modules``).

User errors (a missing file, a bad value, an existing output) end as one line on stderr,
``t2v-turbo <command>: error: <message>``, with exit code 2, the style argparse uses for a bad
flag. ``T2V_TURBO_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from t2v_turbo import __version__
from t2v_turbo.commands import CommandError, trusted_config

# (command words, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("train",), "t2v_turbo.commands.train", "distil a teacher into a consistency student from a YAML config"),
    (("cache",), "t2v_turbo.commands.cache", "encode a run config's dataset once (VAE latents, text embeddings) for training"),
    (("train-reward",), "t2v_turbo.commands.train_reward", "train a reward model on preference pairs (BTT, BT, regression)"),
    (("sample",), "t2v_turbo.commands.sample", "sample videos with a student (multistep consistency) or a teacher (DDIM + CFG)"),
    (("export",), "t2v_turbo.commands.export", "export a student as a peft LoRA adapter, a merged UNet or a diffusers pipeline"),
    (("convert",), "t2v_turbo.commands.convert", "convert VideoCrafter2 / released T2V-Turbo checkpoints to safetensors folders"),
    (("eval", "vbench"), "t2v_turbo.commands.eval_vbench", "generate the VBench suite, run VBench and aggregate its scores"),
    (("eval", "minibench"), "t2v_turbo.commands.eval_minibench", "score mini-world videos with the ground-truth MiniBench"),
    (("miniworld", "build"), "t2v_turbo.commands.miniworld_build", "train the mini world's VAE, text encoder, teacher and reward models"),
    (("quickstart",), "t2v_turbo.commands.quickstart", "run the T2V-Turbo recipe on the mini world end to end and write a report"),
]
#: commands that resolve components of a run config or a student's ``student.json``: they take --trust-config
READS_CONFIGS = ("train", "cache", "train-reward", "sample", "export", "eval vbench", "quickstart")
TRUST_CONFIG_HELP = ("let the config's _component_ nodes (and a student.json's teacher_adapter) call anything importable; "
                     "only for files you trust (by default: the project's packages, torch.optim, diffusers, transformers, "
                     "peft, ...)")
#: exceptions that are the user's to fix (missing or unwritable files, bad values): one line, no traceback
USER_ERRORS = (OSError, ValueError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the command's docstring as written and shows each option's default after its help
    (unless the help already says what the default is, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or no_default or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every subcommand with its own options."""
    parser = argparse.ArgumentParser(
        prog="t2v-turbo", formatter_class=HelpFormatter,
        description="Fast few-step text-to-video generators by consistency distillation with mixed reward feedback.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        kwargs = dict(help=help_text, description=module.__doc__, formatter_class=HelpFormatter)
        if len(words) == 1:
            p = sub.add_parser(words[0], **kwargs)
        else:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands", formatter_class=HelpFormatter)
                group.set_defaults(_parser=group)
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], **kwargs)
        module.add_arguments(p)
        if " ".join(words) in READS_CONFIGS:
            p.add_argument("--trust-config", action="store_true", help=TRUST_CONFIG_HELP)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not hasattr(args, "_parser"):
        parser.print_help()
        return 2
    if not hasattr(args, "_run"):  # a command group (``t2v-turbo eval``) without its subcommand
        args._parser.print_help()
        return 2
    try:
        with trusted_config(getattr(args, "trust_config", False)):
            return int(args._run(args) or 0)
    except (CommandError, *USER_ERRORS) as err:
        if os.environ.get("T2V_TURBO_TRACEBACK"):
            raise
        print(f"{args._parser.prog}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
