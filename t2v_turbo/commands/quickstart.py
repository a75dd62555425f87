"""``t2v-turbo quickstart [--out DIR]``: the T2V-Turbo recipe on the mini world, end to end.

1. trains a LoRA student with CD + mixed reward through the normal trainer (``t2v-turbo train
   configs/miniworld.yaml``), on the shipped mini-world teacher and reward models;
2. samples 4-step videos for the shipped evaluation prompt set;
3. scores them with MiniBench next to the ground truth and the 50-step CFG teacher (the teacher's
   cached scores, computed with a recorded seed, unless ``--sample-teacher``);
4. times 4-step student vs 50-step CFG teacher sampling on the same batch;
5. writes ``report.md`` with the table, a sample grid (gif + png) and a loss/reward plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from t2v_turbo.commands import CommandError, positive_int

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "miniworld.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="run config (default: %(default)s, the shipped mini-world recipe)")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the config's train.max_steps)")
    parser.add_argument("--sample-teacher", action="store_true",
                        help="sample the 50-step teacher in this run instead of using its cached MiniBench scores")
    parser.add_argument("--num-prompts", type=positive_int, default=None,
                        help="evaluate only the first N evaluation prompts (quick checks; default all 90)")
    # One thread: on a shared 2-core machine two spinning OpenMP threads collapse to 12-15x slower steps when any
    # other job runs, one thread only halves its speed (bench/bench_threads.py, bench/RESULTS.md).
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default %(default)s: degrades gracefully on a shared machine; "
                             "2 is faster only on an otherwise idle machine)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for the training run")


def run(args: argparse.Namespace) -> int:
    import torch

    from miniworld import minibench
    from miniworld import report as rp
    from miniworld.assets import evaluation_prompts, load_teacher, teacher_scores_path
    from t2v_turbo.cli import main as cli_main
    from t2v_turbo.config import load_config
    from t2v_turbo.pipeline import load_student_pipeline

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    overrides = [f"output_dir={out / 'run'}", f"data.folder={out / 'data'}"] + list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    cfg = load_config(args.config, overrides)
    t0 = time.time()
    code = cli_main(["train", args.config, *overrides])
    if code:
        raise CommandError(f"training failed (exit code {code}); its error is printed above")
    train_seconds = time.time() - t0

    prompts = evaluation_prompts()[: args.num_prompts]
    guidance = float(cfg["validation"]["guidance_scale"])
    pipeline = load_student_pipeline(out / "run" / "student")
    t0 = time.time()
    student_videos = rp.sample_videos(pipeline, prompts, seed=cfg["seed"], guidance_scale=guidance)
    sample_seconds = time.time() - t0
    rp.write_videos(out / "videos" / "student", student_videos, prompts)
    reports = {"ground truth": minibench.ground_truth_report(prompts)}
    teacher_cache = teacher_scores_path(cfg["teacher"].get("path"))
    adapter = load_teacher(cfg["teacher"].get("path"))
    teacher_videos = None
    if args.sample_teacher or not teacher_cache.is_file() or args.num_prompts is not None:
        teacher_videos = rp.sample_teacher(adapter, prompts, seed=cfg["seed"], guidance_scale=guidance)
        rp.write_videos(out / "videos" / "teacher", teacher_videos, prompts)
        reports["teacher (50 steps + CFG)"] = minibench.evaluate_folder(out / "videos" / "teacher")
        teacher_note = f"sampled in this run (seed {cfg['seed']}, guidance {guidance})"
    else:
        cached = json.loads(teacher_cache.read_text())
        reports["teacher (50 steps + CFG)"] = cached["report"]
        teacher_note = f"cached scores from {teacher_cache.name} ({cached['settings']})"
    reports["T2V-Turbo student (4 steps)"] = minibench.evaluate_folder(out / "videos" / "student")
    speed = rp.time_sampling(pipeline, adapter, prompts[:8], guidance_scale=guidance)

    scalars = rp.read_scalars(out / "run" / "logs")
    plot = rp.plot_training(scalars, out / "training.png")
    show = [i for i in (0, 10, 20, 30, 45, 55, 65, 80) if i < len(prompts)]
    rows = {"student (4 steps)": student_videos[show]}
    # the teacher beside the student: sampled here for the shown prompts when its scores came from the cache
    shown_teacher = (teacher_videos[show] if teacher_videos is not None else
                     rp.sample_teacher(adapter, [prompts[i] for i in show], seed=cfg["seed"], guidance_scale=guidance))
    rows["teacher (50 steps + CFG)"] = shown_teacher
    import numpy as np

    from miniworld.world import sample_for_caption

    rows["ground truth"] = np.stack([sample_for_caption(prompts[i]).video for i in show])
    grid = rp.save_sample_grid(out / "samples", rows, [prompts[i] for i in show])
    summary = {name: rp.compact(r) for name, r in reports.items()}
    rp.save_json(out / "results.json", {"minibench": summary, "speed": speed, "train_seconds": train_seconds,
                                         "student_sample_seconds_90_videos": sample_seconds,
                                         "total_seconds": time.time() - t_start, "config": cfg})
    md = [
        "# T2V-Turbo quick start on the mini world",
        "",
        f"Machine: {speed['machine']}, torch threads {speed['torch_threads']}. "
        f"Training: {cfg['train']['max_steps']} steps, batch {cfg['dataloader']['batch_size']}, "
        f"rewards {[r['name'] for r in cfg['rewards']] or 'none (VCM)'}: {train_seconds / 60:.1f} min; "
        f"whole quick start {(time.time() - t_start) / 60:.1f} min.",
        "",
        "## MiniBench on the evaluation prompt set (45 held-out + 45 seen captions, one video each)",
        "",
        rp.results_table(reports),
        f"Teacher: {teacher_note}. Rows are overall scores; the last two columns split Total into seen / held-out captions.",
        "",
        "## Sampling speed (same batch of 8 prompts)",
        "",
        f"4-step student: {speed['student_seconds']:.2f} s; 50-step teacher with CFG: {speed['teacher_seconds']:.2f} s; "
        f"speed-up {speed['speedup']:.1f}x.",
        "",
        "## Samples",
        "",
        f"![frames]({grid[1].name})",
        "",
        "Per prompt (its caption above), one strip of frames per model, labelled with the MiniBench verdict of "
        "that video: pass, or the attributes it gets wrong.",
        "",
        f"Animated: [{grid[0].name}]({grid[0].name}) (rows: {', '.join(rows)}; one column per prompt, in the order "
        "of the sheet).",
        "",
        "## Training curves",
        "",
        f"![training]({plot.name})",
        "",
    ]
    unreadable = sum(len(r.get("unreadable", [])) for r in reports.values())
    if unreadable:
        md.append(f"**{unreadable} video(s) could not be scored; see results.json.**")
    (out / "report.md").write_text("\n".join(md) + "\n")
    print(rp.results_table(reports))
    print(f"wrote {out / 'report.md'}")
    return 0
