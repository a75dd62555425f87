"""VBench reports: JSON + Markdown table + bar chart PNG, next to published models and a second run.

Numbers are printed in percent with 2 decimals, as on the leaderboard. A partial run (some of
the 16 dimensions missing) is labelled PARTIAL at the top, lists the missing dimensions, prints
"—" for every group score it cannot compute and shows the weighted mean over the dimensions it
has only as "partial" (never as Quality/Semantic/Total).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from eval.vbench.aggregate import (
    DIMENSIONS,
    NORMALIZATION,
    QUALITY_DIMENSIONS,
    SEMANTIC_DIMENSIONS,
    AggregateResult,
    aggregate,
    aggregate_directory,
)

REPORT_JSON, REPORT_MD, REPORT_PNG = "vbench_scores.json", "vbench_report.md", "vbench_report.png"


@dataclass
class Column:
    label: str
    result: AggregateResult
    kind: str  # "run", "compare" or "published"


def load_references(path: str | os.PathLike | None = None) -> list[Column]:
    """Published models (percent per dimension) shipped in ``eval/vbench/data/vbench_published.json``."""
    if path is None:
        text = resources.files("eval.vbench").joinpath("data/vbench_published.json").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    return [Column(f"{name} (published)", aggregate(entry["dimensions_percent"], scale=100), "published") for name, entry in data.items()]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _group_cell(result: AggregateResult, group_value: float | None, partial: float | None, dims: Sequence[str]) -> str:
    if group_value is not None:
        return f"**{_fmt(group_value)}**"
    have = sum(d in result.raw for d in dims)
    if partial is None:
        return "—"
    return f"— (partial {have}/{len(dims)}: {_fmt(partial)})"


def render_markdown(columns: Sequence[Column], title: str = "VBench report", notes: Sequence[str] = ()) -> str:
    run = columns[0]
    lines = [f"# {title}", ""]
    if run.result.complete:
        lines.append(f"Status: complete (16/16 dimensions) for **{run.label}**.")
    else:
        have = len(DIMENSIONS) - len(run.result.missing)
        lines.append(
            f"Status: **PARTIAL** ({have}/16 dimensions) for **{run.label}**: no Total is reported, and a group score "
            "is shown only when all its dimensions are present. Missing: " + ", ".join(run.result.missing) + "."
        )
    for col in columns[1:]:
        if col.kind == "compare" and not col.result.complete:
            lines.append(f"Compared run **{col.label}** is partial too; missing: {', '.join(col.result.missing)}.")
    lines += [f"- {n}" for n in notes]
    lines += ["", "Scores in percent (leaderboard normalisation for the group rows; per-dimension rows are raw VBench scores).", ""]
    header = "| Dimension | Group | " + " | ".join(c.label for c in columns) + " |"
    lines += [header, "|" + "---|" * (2 + len(columns))]
    for dim in DIMENSIONS:
        group = NORMALIZATION[dim][3]
        lines.append(f"| {dim} | {group} | " + " | ".join(_fmt(c.result.raw.get(dim)) for c in columns) + " |")
    lines.append("| **Quality** | | " + " | ".join(_group_cell(c.result, c.result.quality, c.result.partial_quality, QUALITY_DIMENSIONS) for c in columns) + " |")
    lines.append("| **Semantic** | | " + " | ".join(_group_cell(c.result, c.result.semantic, c.result.partial_semantic, SEMANTIC_DIMENSIONS) for c in columns) + " |")
    lines.append("| **Total** | | " + " | ".join(f"**{_fmt(c.result.total)}**" if c.result.total is not None else "—" for c in columns) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_chart(columns: Sequence[Column], path: str | os.PathLike, title: str = "VBench") -> Path:
    """Horizontal grouped bars per dimension (percent); missing values are left empty and marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dims = list(DIMENSIONS)
    n = len(columns)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(dims) + 1.5))
    y = np.arange(len(dims))
    for k, col in enumerate(columns):
        values = [100 * col.result.raw[d] if d in col.result.raw else 0.0 for d in dims]
        hatch = None if col.kind != "published" else "//"
        offs = y - 0.4 + height * (k + 0.5)
        ax.barh(offs, values, height=height, label=col.label, hatch=hatch, alpha=0.9 if col.kind != "published" else 0.5)
        for d_i, d in enumerate(dims):
            if d not in col.result.raw and col.kind != "published":
                ax.text(1, offs[d_i], "missing", va="center", fontsize=6, color="gray")
    ax.set_yticks(y, dims)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("score (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike,
    result: AggregateResult,
    label: str = "this run",
    compare: tuple[str, AggregateResult] | None = None,
    references: bool = True,
    run_info: dict | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``vbench_scores.json``, ``vbench_report.md`` and ``vbench_report.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [Column(label, result, "run")]
    if compare is not None:
        columns.append(Column(compare[0], compare[1], "compare"))
    if references:
        columns += load_references()
    notes = list(notes)
    if run_info and run_info.get("vbench_version"):
        notes.append(f"VBench {run_info['vbench_version']} (scores depend on the VBench version), device {run_info.get('device')}.")
    payload = {
        "label": label,
        "result": result.to_json(),
        "compare": None if compare is None else {"label": compare[0], "result": compare[1].to_json()},
        "references": {c.label: c.result.to_json() for c in columns if c.kind == "published"},
        "run_info": run_info,
        "notes": notes,
    }
    paths = {"json": out_dir / REPORT_JSON, "markdown": out_dir / REPORT_MD, "chart": out_dir / REPORT_PNG}
    paths["json"].write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(columns, notes=notes) + f"\n![VBench chart]({REPORT_PNG})\n", encoding="utf-8")
    plot_chart(columns, paths["chart"])
    return paths


def read_run_info(results_dir: str | os.PathLike) -> dict | None:
    """The newest ``*_run_info.json`` written by our runner in ``results_dir``, if any."""
    files = sorted(Path(results_dir).glob("*_run_info.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text(encoding="utf-8")) if files else None


def report_directory(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, label: str | None = None,
                     compare_dir: str | os.PathLike | None = None, references: bool = True,
                     compare_label: str | None = None) -> tuple[AggregateResult, dict[str, Path]]:
    """Aggregate every ``*_eval_results.json`` in ``results_dir`` (and ``compare_dir``) and write the report."""
    results_dir = Path(results_dir)
    result = aggregate_directory(results_dir)
    compare = None
    if compare_dir is not None:
        compare = (compare_label or Path(compare_dir).resolve().name, aggregate_directory(compare_dir))
    paths = write_report(out_dir or results_dir, result, label or results_dir.resolve().name, compare, references,
                         run_info=read_run_info(results_dir))
    return result, paths
