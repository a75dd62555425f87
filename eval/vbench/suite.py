"""The VBench prompt suite: ``VBench_full_info.json`` -> one entry per unique prompt.

The file is a list of ``{"prompt_en", "dimension": [...], "auxiliary_info": {dim: ...}}``. A few
prompts appear on two lines (e.g. once for ``appearance_style`` and once for the aesthetic
dimensions); VBench finds the same ``{prompt}-{i}.mp4`` files for both lines, so the suite merges
them into one entry and every prompt is sampled once.

The JSON is located inside the installed ``vbench`` package with ``importlib.util.find_spec``,
which reads the package's location without executing its ``__init__`` (that would import torch,
decord and cv2).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from eval.vbench.aggregate import DIMENSIONS

FULL_INFO_NAME = "VBench_full_info.json"
#: VBench's static filter draws this many samples per temporal_flickering prompt and keeps 5
FLICKER_DIMENSION = "temporal_flickering"


def locate_full_info_json() -> Path:
    """Path of ``VBench_full_info.json`` in the installed ``vbench`` package (not imported)."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{FULL_INFO_NAME}: the 'vbench' package is not installed here; install it with "
            "'pip install --no-deps vbench==0.1.5' (see docs/vbench.md) or pass the file with --full-info"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FULL_INFO_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{FULL_INFO_NAME} not found in the vbench package at {list(spec.submodule_search_locations)}")


@dataclass
class PromptEntry:
    prompt: str  # the suite's prompt: the file name and what VBench scores against
    dimensions: list[str]
    auxiliary_info: dict = field(default_factory=dict)
    sample_prompt: str | None = None  # augmented prompt used for sampling, if any

    @property
    def text_for_sampling(self) -> str:
        return self.sample_prompt or self.prompt


@dataclass
class Suite:
    entries: list[PromptEntry]
    dimensions: list[str]
    source: str

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


def parse_dimensions(spec: str | Sequence[str] | None) -> list[str]:
    """``None`` / ``"all"`` -> the 16 dimensions; ``"a,b"`` or a list -> checked names, in order."""
    if spec is None or spec == "all" or (not isinstance(spec, str) and list(spec) == ["all"]):
        return list(DIMENSIONS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {unknown}; known: {', '.join(DIMENSIONS)}")
    if not names:
        raise ValueError("no VBench dimension selected")
    return list(dict.fromkeys(names))


def load_augmented_prompts(path: str | os.PathLike) -> dict[str, str]:
    """A JSON object {suite prompt: augmented prompt}."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: expected a JSON object {{prompt: augmented prompt}} of strings")
    return data


def load_suite(
    full_info: str | os.PathLike | None = None,
    dimensions: str | Sequence[str] | None = None,
    augmented: Mapping[str, str] | str | os.PathLike | None = None,
) -> Suite:
    """Entries (unique prompts, file order) belonging to any of ``dimensions``.

    ``augmented`` maps a suite prompt to the text used for sampling; files keep the suite prompt.
    A key that is not a prompt of the selected suite raises ``KeyError`` (it is almost always a typo
    or a different VBench version).
    """
    path = Path(full_info) if full_info is not None else locate_full_info_json()
    if not path.is_file():
        raise FileNotFoundError(f"VBench full-info JSON not found: {path}")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of prompt entries")
    selected = parse_dimensions(dimensions)
    wanted = set(selected)
    merged: dict[str, PromptEntry] = {}
    for i, row in enumerate(rows):
        try:
            prompt, dims = row["prompt_en"], list(row["dimension"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: entry {i} lacks 'prompt_en' or 'dimension': {row!r}") from err
        if not wanted.intersection(dims):
            continue
        entry = merged.setdefault(prompt, PromptEntry(prompt=prompt, dimensions=[]))
        entry.dimensions.extend(d for d in dims if d not in entry.dimensions)
        entry.auxiliary_info.update(row.get("auxiliary_info") or {})
    if augmented is not None:
        mapping = load_augmented_prompts(augmented) if isinstance(augmented, (str, os.PathLike)) else dict(augmented)
        unknown = [p for p in mapping if p not in merged]
        if unknown:
            raise KeyError(f"augmented prompts not in the selected suite ({path.name}, {selected}): {unknown[:5]}")
        for prompt, text in mapping.items():
            merged[prompt].sample_prompt = text
    return Suite(entries=list(merged.values()), dimensions=selected, source=str(path))


def prompts_for_dimension(suite: Suite, dimension: str) -> list[str]:
    return [e.prompt for e in suite.entries if dimension in e.dimensions]


def samples_per_prompt(entry: PromptEntry, num_samples: int = 5, flicker_samples: int = 25) -> int:
    """How many videos a prompt needs: ``flicker_samples`` if it is in the temporal_flickering suite."""
    return max(num_samples, flicker_samples) if FLICKER_DIMENSION in entry.dimensions else num_samples


def iter_dimension_names(suite: Suite) -> Iterable[str]:
    return iter(suite.dimensions)


def write_subset_full_info(prompts: Sequence[str], dest: str | os.PathLike, full_info: str | os.PathLike | None = None) -> Path:
    """Copy the rows of ``full_info`` whose prompt is in ``prompts`` to ``dest`` (a smaller suite VBench can read)."""
    path = Path(full_info) if full_info is not None else locate_full_info_json()
    rows = json.loads(path.read_text(encoding="utf-8"))
    keep = set(prompts)
    unknown = keep - {r["prompt_en"] for r in rows}
    if unknown:
        raise KeyError(f"prompts not in {path}: {sorted(unknown)[:5]}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps([r for r in rows if r["prompt_en"] in keep], indent=1, ensure_ascii=False), encoding="utf-8")
    return dest
