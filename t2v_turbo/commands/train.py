"""``t2v-turbo train CONFIG [key=value ...] [--resume latest|PATH]``: run a training recipe (the config's objective).

Single process: ``t2v-turbo train configs/tiny.yaml train.max_steps=10``.
Several processes: ``accelerate launch --num_processes 8 -m t2v_turbo.cli train configs/t2v_turbo_ms.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os

import yaml

from t2v_turbo.commands import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optimizer.lr=2e-5 train.max_steps=100 (+new.key=v adds, ~key deletes)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint in output_dir, or from a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--trust-config", action="store_true",
                        help="let the config's _component_ nodes call anything importable (only for configs you trust; "
                             "by default they are limited to the project's packages, torch.optim, diffusers, ...)")


def run(args: argparse.Namespace) -> int:
    from t2v_turbo.config import TRUST_CONFIG_ENV

    if not args.trust_config:
        return _run(args)
    # an environment variable, so that DataLoader workers and launched processes see it too
    previous = os.environ.get(TRUST_CONFIG_ENV)
    os.environ[TRUST_CONFIG_ENV] = "1"
    try:
        return _run(args)
    finally:
        if previous is None:
            del os.environ[TRUST_CONFIG_ENV]
        else:
            os.environ[TRUST_CONFIG_ENV] = previous


def _run(args: argparse.Namespace) -> int:
    from distill.checkpoints import CheckpointError, CheckpointWriteError
    from distill.nonfinite import NonFiniteError
    from distill.trainer import TrainingRecipe, resolve_run_config
    from t2v_turbo.config import ConfigError, load_config
    from t2v_turbo.fileio import FolderInUseError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        resolved = resolve_run_config(cfg)
    except ConfigError as err:
        raise CommandError(f"{args.config}: {err}") from err
    text = yaml.safe_dump(resolved, sort_keys=False)
    if args.print_config:
        print(text, end="")
        return 0
    logging.getLogger(__name__).info("resolved config (%s):\n%s", args.config, text)
    recipe = TrainingRecipe(resolved)
    try:  # setup reads a --resume checkpoint first, before the teacher loads and the data renders
        recipe.setup(resume=args.resume)
        recipe.train()
    except (FileNotFoundError, ConfigError, CheckpointError) as err:  # a bad input: config, path, checkpoint
        raise CommandError(f"{args.config}: {err}") from err
    except (FolderInUseError, NonFiniteError, CheckpointWriteError) as err:  # the run could not go on
        raise CommandError(f"{args.config}: {err}", exit_code=1) from err
    finally:
        recipe.cleanup()
    return 0
