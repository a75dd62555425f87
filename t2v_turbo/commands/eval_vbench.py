"""``t2v-turbo eval vbench``: generate the VBench suite, run VBench, aggregate and report.

Examples::

    t2v-turbo eval vbench --checkpoint runs/ms/checkpoint-final --out runs/vbench/student --device cuda
    t2v-turbo eval vbench --teacher ali-vilab/text-to-video-ms-1.7b --out runs/vbench/teacher
    t2v-turbo eval vbench --aggregate-only runs/vbench/student/results --compare runs/vbench/teacher/results

Several processes: ``torchrun --nproc_per_node 8 -m t2v_turbo.cli eval vbench ...`` (or ``accelerate launch``)
splits the videos between them; processes started by hand on the same ``--out`` claim videos one by one
(``--generate-only`` in each, then one run without it scores the complete folder).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from t2v_turbo.commands import CommandError, finite_float, positive_int

FLICKER_NOTE = ("temporal_flickering was scored on the videos -0..-4 of its prompts; VBench's static filter "
                "(RAFT, from the VBench repository) was not applied, see docs/vbench.md.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="STUDENT_DIR", help="student checkpoint folder (student.json + student.safetensors)")
    model.add_argument("--teacher", metavar="PATH", help="teacher folder (diffusers layout) or hub id in the local cache")
    p.add_argument("--dimensions", default="all", help="comma-separated VBench dimensions, or 'all' (default)")
    p.add_argument("--out", default="runs/vbench", help="run folder: videos/, results/, manifest.json, report (default %(default)s)")
    p.add_argument("--num-samples", type=positive_int, default=5, help="videos per prompt (default %(default)s)")
    p.add_argument("--flicker-samples", type=positive_int, default=25, help="videos per temporal_flickering prompt (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default 4 for a student, 50 for a teacher)")
    p.add_argument("--guidance", type=finite_float, default=7.5, help="guidance scale (default %(default)s)")
    p.add_argument("--frames", type=positive_int, default=16, help="frames per video (VBench's published runs: 16)")
    p.add_argument("--height", type=positive_int, default=320, help="video height in pixels")
    p.add_argument("--width", type=positive_int, default=512, help="video width in pixels")
    p.add_argument("--fps", type=positive_int, default=16, help="fps conditioning (families that use it) and of the written files")
    p.add_argument("--seed", type=int, default=0, help="base seed; each video's seed is derived from (seed, prompt, index)")
    p.add_argument("--full-info", default=None, help="VBench_full_info.json (default: the installed vbench package's)")
    p.add_argument("--augmented-prompts", default=None, help="JSON {prompt: augmented prompt} used for sampling")
    p.add_argument("--device", default=None, help="torch device for sampling and VBench (default cuda if available, else cpu)")
    p.add_argument("--vbench-python", default=None, help="python of a separate VBench environment (default: import vbench here)")
    p.add_argument("--vbench-download", action="store_true", help="let VBench download weights missing from its cache")
    p.add_argument("--generate-only", action="store_true", help="stop after generating the videos")
    p.add_argument("--aggregate-only", metavar="DIR", default=None, help="aggregate *_eval_results.json in DIR and write the report")
    p.add_argument("--compare", metavar="DIR", default=None, help="a second run's results to show side by side (e.g. the teacher)")
    p.add_argument("--label", default=None, help="column name of this run in the report")
    p.add_argument("--no-references", action="store_true", help="leave the published models out of the report")


def _results_dir(path: str) -> Path:
    """Accept a results folder or a run folder holding results/."""
    p = Path(path)
    if not any(p.glob("*_eval_results.json")) and (p / "results").is_dir():
        return p / "results"
    return p


def _run_label(path: str) -> str:
    p = Path(path).resolve()
    return p.parent.name if p.name == "results" else p.name


def _print_report(paths: dict) -> None:
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['chart']}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from eval.vbench.report import report_directory

    compare = _results_dir(args.compare) if args.compare else None
    if args.aggregate_only:
        results = _results_dir(args.aggregate_only)
        out = Path(args.out) if args.out != "runs/vbench" else results
        _, paths = report_directory(results, out, label=args.label or _run_label(args.aggregate_only), compare_dir=compare,
                                    compare_label=_run_label(args.compare) if args.compare else None, references=not args.no_references)
        _print_report(paths)
        return 0
    if not (args.checkpoint or args.teacher):
        raise CommandError("give --checkpoint STUDENT_DIR or --teacher PATH (or --aggregate-only DIR)")

    import torch

    from eval.vbench.generate import (
        CLAIMS_DIR,
        VIDEOS_DIR,
        GenerationSettings,
        build_jobs,
        generate_suite,
        is_complete,
        load_model_video_fn,
        process_layout,
    )
    from eval.vbench.runner import (
        VBenchSetupError,
        format_missing_weights,
        missing_weights,
        run_vbench,
        vbench_cache_dir,
    )
    from eval.vbench.suite import load_suite, locate_full_info_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    full_info = Path(args.full_info) if args.full_info else locate_full_info_json()
    suite = load_suite(full_info, args.dimensions, args.augmented_prompts)
    if not args.generate_only and not args.vbench_download and not args.vbench_python:
        missing = missing_weights(suite.dimensions)
        if missing:  # fail before hours of sampling, not after
            raise CommandError(format_missing_weights(missing, vbench_cache_dir()))

    process_index, num_processes, is_main = process_layout(cpu=device == "cpu")
    if num_processes > 1 and device.startswith("cuda") and ":" not in device:
        device = f"cuda:{process_index % max(torch.cuda.device_count(), 1)}"
    settings = GenerationSettings(num_frames=args.frames, height=args.height, width=args.width, fps=args.fps,
                                  num_samples=args.num_samples, flicker_samples=args.flicker_samples, base_seed=args.seed)
    video_fn, record = load_model_video_fn(settings, checkpoint=args.checkpoint, teacher=args.teacher,
                                           num_inference_steps=args.steps, guidance_scale=args.guidance, device=device)
    out = Path(args.out)
    summary = generate_suite(video_fn, suite, out, settings, model=record, process_index=process_index,
                             num_processes=num_processes)
    print(f"[{process_index}] videos: {summary.generated} generated ({summary.redone} redone), {summary.skipped} "
          f"already complete, {summary.claimed_elsewhere} being generated by other processes, {summary.seconds:.0f}s",
          file=sys.stderr)
    if num_processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    if args.generate_only or not is_main:
        return 0
    missing = [job.filename for job in build_jobs(suite, settings)
               if not is_complete(out / VIDEOS_DIR / job.filename, settings.num_frames)]
    if missing:  # claimed by processes started by hand that are still running
        raise CommandError(f"{len(missing)} video(s) of the suite are not complete yet (first: {missing[0]!r}); "
                           f"other processes hold their claims in {out / CLAIMS_DIR}. Run this command again when "
                           "they finish (complete videos are skipped)", exit_code=1)

    label = args.label or f"{record['kind']} {Path(record['path']).name}"
    try:
        run_vbench(out / VIDEOS_DIR, out / "results", suite.dimensions, full_info,
                   name=re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run",
                   device=device, vbench_python=args.vbench_python, allow_download=args.vbench_download,
                   extra_info={"model": record, "manifest": str(out / "manifest.json")})
    except VBenchSetupError as err:
        raise CommandError(str(err)) from err
    from eval.vbench.aggregate import aggregate_directory
    from eval.vbench.report import read_run_info, write_report

    notes = [FLICKER_NOTE] if "temporal_flickering" in suite.dimensions else []
    compare_result = (_run_label(args.compare), aggregate_directory(compare)) if compare else None
    paths = write_report(out, aggregate_directory(out / "results"), label, compare_result, not args.no_references,
                         run_info=read_run_info(out / "results"), notes=notes)
    _print_report(paths)
    return 0
