"""Video file names VBench can find: exactly ``{prompt}-{i}.mp4``.

VBench's loader rule (``vbench.VBench.build_full_info_json``, standard mode, checked against
0.1.5): for every line of the full-info JSON it looks for ``f"{prompt}-{i}{postfix}"`` for
i = 0..4 by exact string membership in ``os.listdir(videos_path)``, where ``postfix`` is the
suffix of the *first* listed file. So:

- the name is the prompt byte for byte: quotes, commas, periods, parentheses and non-ASCII
  characters stay as they are (nothing is escaped or normalised);
- a prompt containing ``/`` or NUL cannot be a file name; none of the suite's prompts do, and
  :func:`video_filename` refuses one with a clear error;
- the videos folder must contain nothing but videos of one suffix (a stray ``manifest.json``
  listed first would make VBench look for ``.json`` videos): the generator writes its manifest and
  temporary files next to that folder, never into it;
- custom-input mode goes the other way: prompt = file stem minus a trailing ``-<digits>``
  (:func:`prompt_from_filename`).

Names must fit the usual 255-byte limit of a file name (the suite's longest prompt is 210 bytes).

Case-only collisions: the suite has "a fantasy landscape" and "A fantasy landscape". On a
case-insensitive file system (default macOS APFS, Windows NTFS) both names are one file, so one
prompt's videos would silently overwrite the other's. Our choice: **refuse** before generating,
with a message naming the colliding prompts and the folder, and asking for a case-sensitive one.
Writing the second variant elsewhere would leave VBench (which reads one folder) unable to score
it, so it would only move the problem to evaluation time.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable

MAX_NAME_BYTES = 255
VIDEO_SUFFIX = ".mp4"
_INDEX_SUFFIX = re.compile(r"-\d+$")


class CaseCollisionError(RuntimeError):
    """Two prompts differ only by case and the output folder is case-insensitive."""


def video_filename(prompt: str, index: int, suffix: str = VIDEO_SUFFIX) -> str:
    """``f"{prompt}-{index}{suffix}"``, checked to be a valid single file name under 255 bytes."""
    if not prompt:
        raise ValueError("empty prompt cannot name a video")
    if "/" in prompt or "\0" in prompt or (os.sep != "/" and os.sep in prompt):
        raise ValueError(f"prompt {prompt!r} contains a path separator or NUL and cannot be a file name")
    if index < 0:
        raise ValueError(f"video index must be >= 0, got {index} for prompt {prompt!r}")
    name = f"{prompt}-{index}{suffix}"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"file name for prompt {prompt[:60]!r}... is {size} bytes (> {MAX_NAME_BYTES})")
    return name


def prompt_from_filename(name: str | os.PathLike) -> str:
    """Custom-input rule: file stem with a trailing ``-<digits>`` removed."""
    stem = Path(name).stem
    return _INDEX_SUFFIX.sub("", stem)


def expected_names(prompt: str, num_samples: int = 5, suffix: str = VIDEO_SUFFIX) -> list[str]:
    """The names VBench's standard-mode loader looks up for one prompt."""
    return [video_filename(prompt, i, suffix) for i in range(num_samples)]


def case_collisions(prompts: Iterable[str]) -> list[list[str]]:
    """Groups of distinct prompts equal up to case (``str.casefold``), each sorted."""
    groups: dict[str, set[str]] = defaultdict(set)
    for prompt in prompts:
        groups[prompt.casefold()].add(prompt)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def is_case_sensitive(directory: str | os.PathLike) -> bool:
    """Probe ``directory``'s file system: create a mixed-case file and look for its lower-case twin."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".CaseProbe-{uuid.uuid4().hex[:8]}-", dir=directory)
    os.close(fd)
    try:
        twin = Path(probe).with_name(Path(probe).name.lower())
        return not twin.exists()
    finally:
        os.unlink(probe)


def check_case_collisions(prompts: Iterable[str], directory: str | os.PathLike, case_sensitive: bool | None = None) -> list[list[str]]:
    """Return the case-only groups; raise :class:`CaseCollisionError` if ``directory`` cannot hold them.

    ``case_sensitive=None`` probes the directory (:func:`is_case_sensitive`).
    """
    groups = case_collisions(prompts)
    if not groups:
        return groups
    if case_sensitive is None:
        case_sensitive = is_case_sensitive(directory)
    if not case_sensitive:
        listing = "; ".join(" / ".join(repr(p) for p in g) for g in groups)
        raise CaseCollisionError(
            f"{directory} is on a case-insensitive file system, but these prompts differ only by case "
            f"and VBench needs a separate file for each: {listing}. Write the videos to a case-sensitive "
            "folder (Linux ext4/xfs, a case-sensitive APFS volume on macOS, or a WSL/Linux path on Windows)."
        )
    return groups
