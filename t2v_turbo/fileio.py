"""Atomic file writes (a reader never sees a half-written checkpoint, video or export) and folder locks
(one writer per output folder)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask (read by setting it and setting it back: there is no read-only call)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    The temporary name keeps ``path``'s suffix so writers that look at it still work; on any
    error it is removed and ``path`` is left as it was. The published file gets the mode a plain
    ``open()`` would give it (0o666 less the umask: 0o644 under the usual 022), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_folder_json(folder: str | os.PathLike, name: str, what: str, hint: str = "") -> Any:
    """The JSON file ``name`` that marks ``folder`` as a ``what`` (a student checkpoint, a latent cache, ...).
    Without it, ``FileNotFoundError`` "no <what> at <folder>: <name> not found", then ``hint`` (where to get one)."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {Path(folder).resolve()}: {name} not found" + (f" ({hint})" if hint else ""))
    return json.loads(path.read_text(encoding="utf-8"))


class PickleRefusedError(RuntimeError):
    """A ``torch.save`` file holds Python objects whose unpickling could run code, and no opt-in was given."""


def torch_load(path: str | os.PathLike, allow_pickle: bool = False,
               opt_in: str = "allow_pickle=True (CLI: --allow-pickle)") -> Any:
    """``torch.load`` on CPU (memory-mapped when the file's format allows) that runs no code from the file.

    The file is read with ``weights_only=True`` (tensors, numbers, strings, containers). A file that
    needs more is refused with ``PickleRefusedError`` naming it and ``opt_in``; with
    ``allow_pickle=True`` it is unpickled in full after a warning, which runs whatever code it
    holds: only for files you trust.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no memory map
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line),
                      "the weights-only load failed")
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path}: refused: it holds Python objects beyond tensors and plain data ({detail}); unpickling "
                f"them could run code. If you trust the file, set {opt_in}"
            ) from err
        logger.warning("%s: unpickling in full (%s given): this runs any code the file holds", path, opt_in)
        return torch.load(path, map_location="cpu", weights_only=False)


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock (the message names its PID)."""


class FolderLock:
    """One writer per folder: an OS file lock (``filelock``) on ``<folder>/.t2v_turbo.lock``, and
    ``<folder>/.t2v_turbo.lock.json`` naming the holder (PID, host, start time, what it is).

    The OS drops the lock when its holder dies (``kill -9`` included), so a lock left behind by a
    killed run is stale: the next run takes it over with a warning naming the dead holder. A second
    live run gets ``FolderInUseError`` naming the holder's PID. Usable as a context manager.
    """

    LOCK_NAME = ".t2v_turbo.lock"
    OWNER_NAME = ".t2v_turbo.lock.json"

    def __init__(self, folder: str | os.PathLike, what: str = "run"):
        from filelock import FileLock

        self.folder, self.what = Path(folder), what
        self._lock = FileLock(str(self.folder / self.LOCK_NAME))
        self.owner_path = self.folder / self.OWNER_NAME

    def read_owner(self) -> dict:
        """The holder's record, or ``{}`` when there is none or it cannot be read."""
        try:
            return json.loads(self.owner_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FolderLock":
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            owner = self.read_owner()
            raise FolderInUseError(
                f"{self.folder.resolve()} is in use by another {owner.get('what', 'process')}: PID "
                f"{owner.get('pid', '?')} on {owner.get('host', '?')} (started {owner.get('started', '?')}) holds "
                f"{self.folder / self.LOCK_NAME}. Wait for it to finish, stop it, or choose another folder"
            ) from None
        stale = self.read_owner()
        if stale:
            logger.warning("%s: taking over the stale lock of PID %s on %s (started %s), which ended without releasing "
                           "it (killed or crashed)", self.folder, stale.get("pid", "?"), stale.get("host", "?"),
                           stale.get("started", "?"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        atomic_write(self.owner_path, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n", encoding="utf-8"))
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self.owner_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_folder(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_folder)`` on a new folder beside ``path``, then move it into place, so the
    result never mixes old and new files and a failed write leaves ``path`` as it was.

    An existing non-empty ``path`` is an error unless ``overwrite``; then the old folder is renamed
    aside, the new one renamed into place and the old one deleted (two renames: only a crash
    between them leaves ``path`` missing, with the old folder kept as ``.<name>.old-*`` beside it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        if path.is_dir() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)  # onto an empty folder or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(path, 0o777 & ~_umask())
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
