"""Subcommands of the t2v-turbo CLI: each module defines add_arguments(parser) and run(args).

Shared here: the user-error exception the CLI prints as one line, argparse value types that name
the flag and the allowed range, and the output checks that run before anything heavy loads.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


class CommandError(Exception):
    """A user error; the CLI prints it as one line, ``t2v-turbo <command>: error: <message>``.

    ``exit_code`` 2 (default): the input is wrong (a bad flag, config value or path); 1: the run itself
    failed and stopped cleanly (another run holds the output folder, every step was non-finite).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str) -> None:
    """The positional arguments of a command that reads a run config: the YAML file and dotted overrides."""
    parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)


def resolved_run_config(args: argparse.Namespace, edit: Callable[[dict], None] | None = None,
                        resolve: Callable[[dict], dict] | None = None) -> dict:
    """``args.config`` with ``args.overrides`` (then ``edit(cfg)``, when given), validated and filled with the
    defaults by ``resolve`` (default ``distill.trainer.resolve_run_config``; ``train-reward`` passes the
    reward-model schema's); a bad config is a one-line error naming the file."""
    from t2v_turbo.config import ConfigError, load_config

    if resolve is None:
        from distill.trainer import resolve_run_config as resolve
    try:
        cfg = load_config(args.config, args.overrides)
        if edit is not None:
            edit(cfg)
        return resolve(cfg)
    except ConfigError as err:
        raise CommandError(f"{args.config}: {err}") from err


def check_writable(folder: str | Path, flag: str = "--out") -> Path:
    """Create ``folder`` if needed and write a temporary file in it, so an output that cannot be
    written fails before sampling or loading a model, naming the flag and the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise CommandError(f"{flag}: cannot write to {folder.resolve()}: {err.strerror or err}") from err
    return folder


def refuse_existing(paths: list[Path], overwrite: bool, flag: str = "--out") -> None:
    """Unless ``overwrite``, fail when any output already exists, naming the first few."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise CommandError(f"{flag}: {len(existing)} output(s) already exist ({shown}); pass --overwrite to replace them")


@contextlib.contextmanager
def trusted_config(enabled: bool) -> Iterator[None]:
    """``--trust-config``: while active, a config's ``_component_`` nodes may call anything importable. An
    environment variable, so that DataLoader workers and launched processes see it too; restored afterwards."""
    from t2v_turbo.config import TRUST_CONFIG_ENV

    if not enabled:
        yield
        return
    previous = os.environ.get(TRUST_CONFIG_ENV)
    os.environ[TRUST_CONFIG_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[TRUST_CONFIG_ENV]
        else:
            os.environ[TRUST_CONFIG_ENV] = previous
