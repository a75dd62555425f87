"""The ``t2v-turbo`` command line.

Each subcommand lives in its own module under ``t2v_turbo.commands`` and defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``t2v-turbo --help`` stays fast and a missing optional dependency of one
command never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command words, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("train",), "t2v_turbo.commands.train", "distil a teacher into a consistency student from a YAML config"),
    (("sample",), "t2v_turbo.commands.sample", "sample videos with a student (multistep consistency) or a teacher (DDIM + CFG)"),
    (("export",), "t2v_turbo.commands.export", "export a student as LoRA safetensors, a merged UNet or a diffusers pipeline"),
    (("convert",), "t2v_turbo.commands.convert", "convert VideoCrafter2 / released T2V-Turbo checkpoints to safetensors folders"),
    (("eval", "vbench"), "t2v_turbo.commands.eval_vbench", "generate the VBench suite, run VBench and aggregate its scores"),
    (("eval", "minibench"), "t2v_turbo.commands.eval_minibench", "score mini-world videos with the ground-truth MiniBench"),
    (("miniworld", "build"), "t2v_turbo.commands.miniworld_build", "train the mini world's VAE, text encoder, teacher and reward models"),
    (("quickstart",), "t2v_turbo.commands.quickstart", "run the T2V-Turbo recipe on the mini world end to end and write a report"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2v-turbo", description="Fast 4-step text-to-video generators by consistency distillation with mixed reward feedback.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_text in COMMANDS:
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], help=help_text)
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the command words first so each command module adds its own arguments lazily.
    args, _ = parser.parse_known_args(argv)
    if not hasattr(args, "_module"):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    module.add_arguments(args._parser)
    args = parser.parse_args(argv)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
