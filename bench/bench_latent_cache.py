"""Training from cached latents vs from videos (``t2v-turbo cache``): step time and memory, tiny config and mini world.

For each config the same run is measured reading videos (PyAV decode, VAE encode, text encode every step) and
reading the cache the same config wrote (``distill.latent_cache.CachedLatents``: the text encoder and the VAE
encoder are released; the mini world's rewards keep the VAE decoder).

- time: both recipes are set up in one subprocess and their steps alternate (video, latent, video, ...), so the
  load of a shared machine hits both alike. ``step_s``: median wall time of a step including the fetch of its
  batch (``next(dataloader)``, where the video path decodes its clips, ``num_workers: 0``) and ``train_step``
  (batch preparation, loss, backward, optimizer step), over ``--steps`` steps after one warm-up step each;
  ``step_ratio_median``: the median over steps of latent / video of neighbouring steps;
- memory: each path alone in a subprocess (setup and 2 steps). ``frozen_param_mib``: bytes of the frozen teacher
  modules the adapter holds after setup (exact); ``max_rss_mib``: the process's peak resident set size (includes
  about 1 GiB of libraries); ``loss_first_step``: the first step's loss (both paths see the same samples and draws).

The cache is written beforehand in its own subprocess (``write_cache``), so its encoders never count in the
latent path's memory.

    OMP_NUM_THREADS=1 python bench/bench_latent_cache.py --steps 10 > latent_cache.json
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
CONFIGS = ("tiny", "miniworld")


def config_for(name: str, root: Path) -> dict:
    """The resolved run config of ``name`` with its assets under ``root`` (built by ``prepare``)."""
    from distill.trainer import resolve_run_config
    from t2v_turbo.config import load_config

    if name == "tiny":
        overrides = [f"teacher.path={root / 'teacher'}", f"data.folder={root / 'videos'}", "dataloader.batch_size=2",
                     "data.num_frames=8", "validation.prompts=[]"]
        path = REPO / "configs" / "tiny.yaml"
    else:
        overrides = [f"data.folder={root / 'miniworld-data'}", "data.num_videos=32", "dataloader.batch_size=4"]
        path = REPO / "configs" / "miniworld.yaml"
    return resolve_run_config(load_config(path, [*overrides, f"output_dir={root / 'run'}", "logging.tensorboard=false",
                                                 "train.checkpoint_every=0", "validation.every=0"]))


def prepare(name: str, root: Path) -> None:
    """Teacher and videos (tiny), the world's clips (mini world), and the cache of the config's data."""
    from distill.latent_cache import write_cache
    from t2v_turbo.config import instantiate

    if name == "tiny":
        from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

        build_tiny_diffusers_t2v(root / "teacher")
        write_caption_folder(root / "videos", [f"a cat running {i}" for i in range(8)])
    cfg = config_for(name, root)
    instantiate(cfg["data"])  # the mini world writes its clips on first use
    write_cache(cfg, root / "cache", shard_size=16, batch_size=4, device="cpu", progress=False)


def build_recipe(name: str, path: str, root: Path):
    from distill.trainer import TrainingRecipe

    cfg = config_for(name, root)
    cfg["output_dir"] = str(root / f"run-{path}")
    if path == "latent":
        cfg["data"] = {"_component_": "distill.latent_cache.CachedLatents", "path": str(root / "cache")}
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    return recipe


def memory_variant(name: str, path: str, root: Path) -> dict:
    recipe = build_recipe(name, path, root)
    frozen = sum(p.numel() * p.element_size() for m in recipe.adapter.modules().values() for p in m.parameters())
    data = iter(recipe.dataloader)
    first = recipe.train_step(next(data))[0].loss.item()
    recipe.train_step(next(data))
    recipe.cleanup()
    return {"path": path, "frozen_modules": sorted(recipe.adapter.modules()), "frozen_param_mib": frozen / 2**20,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss_first_step": first}


def timing(name: str, root: Path, steps: int) -> dict:
    import torch

    recipes = {path: build_recipe(name, path, root) for path in ("video", "latent")}
    data = {path: iter(recipe.dataloader) for path, recipe in recipes.items()}
    for path, recipe in recipes.items():
        recipe.train_step(next(data[path]))  # warm-up
    times = {"video": [], "latent": []}
    for _ in range(steps):
        for path, recipe in recipes.items():
            start = time.perf_counter()
            recipe.train_step(next(data[path]))
            times[path].append(time.perf_counter() - start)
    recipes["video"].cleanup()
    ratios = [latent / video for video, latent in zip(times["video"], times["latent"])]
    return {"step_s": {path: statistics.median(t) for path, t in times.items()},
            "step_s_min": {path: min(t) for path, t in times.items()}, "step_ratio_median": statistics.median(ratios),
            "steps": steps, "batch_size": recipes["video"].cfg["dataloader"]["batch_size"],
            "num_frames": recipes["video"].dataset.num_frames, "torch_threads": torch.get_num_threads()}


def subprocess_json(args: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--prepare", choices=CONFIGS, help="(internal) build assets and the cache")
    parser.add_argument("--memory", nargs=2, metavar=("CONFIG", "PATH"), help="(internal) one path's memory")
    parser.add_argument("--timing", choices=CONFIGS, help="(internal) both paths' step times, interleaved")
    parser.add_argument("--root", type=Path, help="(internal) assets folder")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.root)
        return
    if args.memory:
        print(json.dumps(memory_variant(*args.memory, args.root)))
        return
    if args.timing:
        print(json.dumps(timing(args.timing, args.root, args.steps)))
        return
    results = []
    for name in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess_json(["--prepare", name, "--root", tmp])
            memory = {path: subprocess_json(["--memory", name, path, "--root", tmp]) for path in ("video", "latent")}
            times = subprocess_json(["--timing", name, "--root", tmp, "--steps", str(args.steps)])
        ratios = {"step_s_ratio": times["step_s"]["latent"] / times["step_s"]["video"],
                  "step_ratio_median": times["step_ratio_median"],
                  **{f"{key}_ratio": memory["latent"][key] / memory["video"][key]
                     for key in ("frozen_param_mib", "max_rss_mib")},
                  "loss_first_step_abs_diff": abs(memory["latent"]["loss_first_step"]
                                                  - memory["video"]["loss_first_step"])}
        results.append({"config": name, "timing": times, "memory": memory, "latent_over_video": ratios})
    print(json.dumps({"benchmark": "latent_cache", "device": "cpu", "results": results}, indent=2))


if __name__ == "__main__":
    main()
