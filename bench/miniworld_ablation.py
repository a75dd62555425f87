"""The paper's ablation on the mini world, with fixed seeds; prints JSON, writes bench/RESULTS.md.

Rows: ground truth; teacher DDIM-50 + CFG; 4-step students distilled with CD only (VCM),
CD + image reward, CD + video reward, CD + both (T2V-Turbo). Every student is trained by the
normal trainer (``t2v-turbo train configs/miniworld.yaml ...``) with the same seed, steps and
data; only ``rewards`` differs. MiniBench per dimension, seen / held-out, on the shipped
evaluation prompt set; plus the sampling speed ratio (4-step student vs 50-step CFG teacher,
same batch).

    python bench/miniworld_ablation.py [--steps N] [--write-results] [--write-teacher-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "VCM (CD only)": "[]",
    "CD + image reward": "[{name: miniworld-image, weight: 1.0, args: {num_frames: 4}}]",
    "CD + video reward": "[{name: miniworld-video, weight: 2.0, args: {}}]",
    "T2V-Turbo (CD + both)": "[{name: miniworld-image, weight: 1.0, args: {num_frames: 4}}, {name: miniworld-video, weight: 2.0, args: {}}]",
}
KEYS = {"VCM (CD only)": "vcm", "CD + image reward": "img", "CD + video reward": "vid", "T2V-Turbo (CD + both)": "both"}
BEGIN, END = "<!-- miniworld-ablation:begin -->", "<!-- miniworld-ablation:end -->"


def train_command(out: Path, name: str, steps: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "t2v_turbo.cli", "train", str(REPO / "configs" / "miniworld.yaml"),
            f"output_dir={out / KEYS[name]}", f"data.folder={out / 'data'}", f"train.max_steps={steps}",
            f"rewards={VARIANTS[name]}", "logging.tensorboard=true", *extra]


def start_trainings(out: Path, names: list[str], steps: int, extra: list[str]) -> dict:
    """Start the variants' trainings as subprocesses (1 torch thread each); returns name -> (process, start, log)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # the dataset is written once, before any run, so parallel runs never race on it
    from miniworld.assets import training_dataset
    from t2v_turbo.config import load_config

    cfg = load_config(REPO / "configs" / "miniworld.yaml", extra)
    training_dataset(out / "data", num_videos=cfg["data"]["num_videos"], seed=cfg["data"]["seed"])
    running = {}
    for name in names:
        if (out / KEYS[name] / "student" / "student.json").is_file():
            continue
        log = open(out / f"{KEYS[name]}.log", "w")
        running[name] = (subprocess.Popen(train_command(out, name, steps, extra), env=env, stdout=log, stderr=subprocess.STDOUT),
                         time.time(), log)
    return running


def wait_trainings(out: Path, running: dict) -> dict:
    """Wait for every training; returns wall seconds per variant; a failed run raises, naming its log."""
    seconds = {}
    while len(seconds) < len(running):  # poll, so each run's own finishing time is recorded
        for name, (proc, t0, log) in running.items():
            if name in seconds or proc.poll() is None:
                continue
            log.close()
            if proc.returncode:
                raise RuntimeError(f"training {name!r} failed (exit {proc.returncode}); see {out / (KEYS[name] + '.log')}")
            seconds[name] = time.time() - t0
        time.sleep(1)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/miniworld-ablation")
    parser.add_argument("--steps", type=int, default=None, help="student training steps (default: configs/miniworld.yaml)")
    parser.add_argument("--variants", default=",".join(KEYS.values()), help="subset of vcm,img,vid,both")
    parser.add_argument("--teacher-guidance", type=float, default=None, help="teacher CFG scale (default: config validation.guidance_scale)")
    parser.add_argument("--num-prompts", type=int, default=None, help="only the first N evaluation prompts (quick checks)")
    parser.add_argument("--write-results", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--write-teacher-cache", action="store_true", help="store the teacher's scores in the shipped assets for the quick start")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every student run")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from miniworld import minibench
    from miniworld import report as rp
    from miniworld.assets import ASSETS, evaluation_prompts, load_teacher
    from t2v_turbo.config import load_config
    from t2v_turbo.pipeline import load_student_pipeline

    cfg = load_config(REPO / "configs" / "miniworld.yaml", args.overrides)
    steps = args.steps or cfg["train"]["max_steps"]
    guidance = float(cfg["validation"]["guidance_scale"])
    teacher_guidance = args.teacher_guidance or guidance
    seed = cfg["seed"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in VARIANTS if KEYS[n] in args.variants.split(",")]
    prompts = evaluation_prompts()[: args.num_prompts]

    t0 = time.time()
    running = start_trainings(out, names, steps, args.overrides)  # the teacher samples while they train
    reports = {"ground truth": minibench.ground_truth_report(prompts)}
    adapter = load_teacher(cfg["teacher"].get("path"))
    reports["VAE reconstruction of ground truth (ceiling of latent models)"] = rp.compact(
        minibench.evaluate(rp.vae_roundtrip(adapter, prompts, seed=seed), prompts))
    teacher_json = out / "teacher_minibench.json"
    settings = f"DDIM 50 steps, CFG {teacher_guidance}, seed {seed}, one video per prompt, {len(prompts)} prompts"
    if teacher_json.is_file() and json.loads(teacher_json.read_text())["settings"] == settings:
        reports["teacher (DDIM 50 + CFG)"] = json.loads(teacher_json.read_text())["report"]
    else:
        videos = rp.sample_teacher(adapter, prompts, seed=seed, guidance_scale=teacher_guidance)
        rp.write_videos(out / "videos" / "teacher", videos, prompts)
        reports["teacher (DDIM 50 + CFG)"] = rp.compact(minibench.evaluate_folder(out / "videos" / "teacher"))
        rp.save_json(teacher_json, {"settings": settings, "report": reports["teacher (DDIM 50 + CFG)"]})
    train_seconds = wait_trainings(out, running)
    if args.write_teacher_cache:
        rp.save_json(ASSETS / "teacher_minibench.json", json.loads(teacher_json.read_text()))
    speed = None
    for name in names:
        pipe = load_student_pipeline(out / KEYS[name] / "student")
        videos = rp.sample_videos(pipe, prompts, seed=seed, guidance_scale=guidance)
        rp.write_videos(out / "videos" / KEYS[name], videos, prompts)
        reports[f"{name}, 4 steps"] = rp.compact(minibench.evaluate_folder(out / "videos" / KEYS[name]))
        if speed is None:
            speed = rp.time_sampling(pipe, adapter, prompts[:8], guidance_scale=guidance)
    result = {
        "machine": "2-core CPU (shared with other jobs), no GPU",
        "student_steps": steps, "batch_size": cfg["dataloader"]["batch_size"], "seed": seed,
        "student_guidance_scale": guidance, "teacher_guidance_scale": teacher_guidance,
        "train_seconds": {KEYS[n]: s for n, s in train_seconds.items()},
        "speed": speed, "total_seconds": time.time() - t0,
        "minibench": {n: {k: r[k] for k in ("overall", "seen", "held_out", "unreadable")} for n, r in reports.items()},
    }
    rp.save_json(out / "ablation.json", result)
    print(json.dumps(result, indent=2))
    table = rp.results_table(reports)
    if args.write_results:
        write_results_section(table, result)
    print(table)
    return 0


def write_results_section(table: str, result: dict) -> None:
    """Replace the mini-world section of bench/RESULTS.md (between the markers), or append it."""
    speed = result["speed"]
    body = "\n".join([
        BEGIN,
        "## Mini world: the paper's ablation (bench/miniworld_ablation.py)",
        "",
        f"Machine: {result['machine']}. Students: LoRA, {result['student_steps']} steps, batch {result['batch_size']}, "
        f"seed {result['seed']}, sampled with 4 steps at guidance {result['student_guidance_scale']}; "
        f"teacher: DDIM 50 steps, CFG {result['teacher_guidance_scale']}. "
        "MiniBench on the 90 evaluation prompts (45 held-out, 45 seen), one video each.",
        "",
        table,
        (f"Sampling speed, batch of {speed['batch']}: 4-step student {speed['student_seconds']:.2f} s, "
         f"50-step CFG teacher {speed['teacher_seconds']:.2f} s: **{speed['speedup']:.1f}x**." if speed else ""),
        "",
        "Training wall time per student (s, runs in parallel on the shared machine): "
        + ", ".join(f"{k} {v:.0f}" for k, v in result["train_seconds"].items()),
        "",
        END,
    ])
    from miniworld.report import write_marked_section

    write_marked_section(REPO / "bench" / "RESULTS.md", BEGIN, END, body)


if __name__ == "__main__":
    sys.exit(main())
