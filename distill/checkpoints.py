"""Training checkpoints on disk: written atomically, read without running code, corrupt ones named.

``output_dir/checkpoint-<step>/`` holds ``student/`` (a loadable student), ``training_state.pt``
(trainable weights, optimizer, grad scaler, LR schedule, EMA, counters, data position),
``rng_state_<rank>.pt`` (each process's RNG states) and the run's ``config.yaml``. Both ``.pt``
files hold plain data only (tensors, numbers, strings, lists, tuples, dicts) and are read with
``torch.load(weights_only=True)``: a file holding any other Python object is refused, naming the
file, and nothing of it runs (no opt-in exists: a training state never needs one).

- ``write_guard`` wraps the writes of a checkpoint: a failed write (a full disk, a quota) removes the
  partial ``.tmp`` folder, keeps every previous checkpoint and raises ``CheckpointWriteError``
  naming the path, the bytes needed and the bytes free;
- ``read_checkpoint`` raises ``CheckpointError`` naming the unreadable file (truncated, empty, refused);
- ``find_resume_checkpoint("latest", ...)`` takes the newest readable checkpoint, warning about each
  newer one it cannot read; a path is read or refused with its file named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "training_state.pt"
CONFIG_NAME = "config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (the message names the file and why)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (the message names the path, the bytes needed and free)."""


def rng_file_name(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` folders, oldest first (``.tmp`` leftovers are ignored)."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / STATE_NAME).is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) RNG states as plain data (NumPy's key as an int64 tensor)."""
    numpy = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": numpy["bit_generator"],
                  "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)), "pos": int(numpy["state"]["pos"]),
                  "has_gauss": int(numpy["has_gauss"]), "gauss": float(numpy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_plain(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; every failure becomes a ``CheckpointError`` naming ``path``."""
    import pickle

    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: it holds Python objects other than plain data (tensors, numbers, strings, lists, "
            "dicts), which a training state written by t2v-turbo never does; loading it could run code, and there "
            f"is no opt-in for training states ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:  # torch's zip reader raises RuntimeError for truncated or empty files
        raise CheckpointError(f"{path}: unreadable ({path.stat().st_size} bytes): {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err


@dataclasses.dataclass
class LoadedCheckpoint:
    folder: Path
    state: dict
    rng: dict


def read_checkpoint(folder: str | Path, rank: int) -> LoadedCheckpoint:
    """The training state and this process's RNG state of ``folder``; ``CheckpointError`` naming the bad file."""
    folder = Path(folder)
    return LoadedCheckpoint(folder, read_plain(folder / STATE_NAME), read_plain(folder / rng_file_name(rank)))


def find_resume_checkpoint(resume: str, output_dir: str | Path, rank: int) -> LoadedCheckpoint:
    """``"latest"``: the newest readable checkpoint of ``output_dir`` (a warning names each newer one that
    cannot be read); otherwise the checkpoint folder ``resume``. Raises ``FileNotFoundError`` when
    there is none, ``CheckpointError`` naming the file when the one asked for cannot be read."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(f"--resume {resume}: {path.resolve()} is not a checkpoint folder (no {STATE_NAME})")
        return read_checkpoint(path, rank)
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume latest: no complete {CHECKPOINT_PREFIX}<step> folder in {Path(output_dir).resolve()}")
    problems = []
    for folder in reversed(checkpoints):
        try:
            loaded = read_checkpoint(folder, rank)
        except CheckpointError as err:
            logger.warning("--resume latest: skipping %s: %s", folder.name, err)
            problems.append(str(err))
            continue
        if problems:
            logger.warning("--resume latest: resuming from %s, the newest readable checkpoint", folder)
        return loaded
    raise CheckpointError("--resume latest: no checkpoint in {} can be read:\n  {}".format(
        Path(output_dir).resolve(), "\n  ".join(problems)))


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested structure of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@contextlib.contextmanager
def write_guard(tmp: Path | None, final: Path, needed_bytes: int) -> Iterator[None]:
    """Writes of checkpoint ``final`` (into the folder ``tmp``, when given): on any failure ``tmp`` is removed
    and ``CheckpointWriteError`` names ``final``, the bytes needed and the bytes free on its disk."""
    try:
        yield
    except Exception as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(final.parent).free
        kept = list_checkpoints(final.parent)
        raise CheckpointWriteError(
            f"writing {final} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. It needs "
            f"about {needed_bytes:,} bytes; {free:,} bytes are free on that disk. The previous checkpoint "
            f"{kept[-1] if kept else '(none)'} is kept; free some space and continue with --resume latest"
        ) from err
