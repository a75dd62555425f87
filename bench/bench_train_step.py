"""Training-step cost of a tiny config on CPU: CD only vs CD + image reward vs CD + both rewards.

``--family diffusers`` runs configs/tiny.yaml (ModelScope layout, epsilon); ``--family wan`` runs
configs/tiny_wan.yaml (Wan layout, rectified flow, 9 frames at 32x32, rewards within its
``reward_options.frame_window`` so only the latent frames they need are decoded).

Each variant runs in its own subprocess, so its peak memory is that process's maximum resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, including the
Python interpreter and imported libraries; the baseline after setup is reported too).
Step time is the median wall time of ``TrainingRecipe.train_step`` (loss, backward,
clipping, optimizer step) over ``--steps`` steps after one warm-up step.

    python bench/bench_train_step.py --steps 10 > bench_train_step.json
    python bench/bench_train_step.py --family wan --num-frames 9 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("cd", "cd+image", "cd+image+video")


CONFIGS = {"diffusers": "tiny.yaml", "wan": "tiny_wan.yaml"}


def build_assets(root: Path, num_frames: int, family: str) -> dict:
    import numpy as np

    from t2v_turbo.testing import build_tiny_diffusers_t2v, build_tiny_wan
    from t2v_turbo.video_io import write_mp4

    teacher = build_tiny_wan(root / "teacher") if family == "wan" else build_tiny_diffusers_t2v(root / "teacher")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_mp4(videos / f"v{i}.mp4", rng.integers(0, 255, size=(num_frames + 2, 16, 16, 3)).astype(np.uint8), fps=8)
        (videos / f"v{i}.txt").write_text("a cat running")
    return {"teacher": teacher, "videos": videos}


def reward_specs(variant: str, root: Path) -> list[dict]:
    from rewards.testing import TINY_REWARD_KWARGS

    specs = []
    if "image" in variant:
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in TINY_REWARD_KWARGS["hpsv2.1"](root / "hps").items()}
        specs.append({"name": "hpsv2.1", "weight": 2.0, "args": {**args, "frame_selection": {"num_frames": 5}}})
    if "video" in variant:
        specs.append({"name": "viclip", "weight": 3.0, "args": {"config": "tiny", "checkpoint": None, "stride": 1}})
    return specs


def run_variant(variant: str, steps: int, batch_size: int, num_frames: int, family: str) -> dict:
    import torch

    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assets = build_assets(root, num_frames, family)
        cfg = load_config(REPO / "configs" / CONFIGS[family], [
            f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}", f"output_dir={root / 'run'}",
            "logging.tensorboard=false", f"dataloader.batch_size={batch_size}", f"data.num_frames={num_frames}",
        ])
        cfg["rewards"] = reward_specs(variant, root)
        recipe = TrainingRecipe(cfg)
        recipe.setup()
        rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = iter(recipe.dataloader)
        recipe.train_step(next(data))  # warm-up
        times = []
        for _ in range(steps):
            batch = next(data)
            start = time.perf_counter()
            out = recipe.train_step(batch)[0]
            times.append(time.perf_counter() - start)
        recipe.cleanup()
    return {
        "variant": variant,
        "step_time_s_median": statistics.median(times),
        "step_time_s_min": min(times),
        "steps": steps,
        "batch_size": batch_size,
        "num_frames": num_frames,
        "decoded_samples_frames": out.decoded,
        "decoded_latent_frames": out.decoded_latent_frames,
        "max_rss_mib_after_setup": rss_setup / 1024,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip (viclip tiny takes 8)")
    parser.add_argument("--family", choices=sorted(CONFIGS), default="diffusers", help="which tiny config")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.batch_size, args.num_frames, args.family)))
        return
    results = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--num-frames", str(args.num_frames), "--family", args.family]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if proc.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[0]["step_time_s_median"]
    for r in results:
        r["step_time_ratio_to_cd"] = r["step_time_s_median"] / base
    print(json.dumps({"benchmark": "train_step", "family": args.family, "device": "cpu", "memory": "ru_maxrss of the variant's process",
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
