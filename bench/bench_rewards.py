"""Forward + backward time and peak memory of each reward, printed as JSON.

    python bench/bench_rewards.py                       # every reward with tiny checkpoints, CPU
    python bench/bench_rewards.py --names hpsv2.1 clip --frames 16 --repeats 5
    python bench/bench_rewards.py --size full --device cuda   # ViT-H-14 open_clip rewards, random weights

``--size tiny`` builds each reward from the tiny checkpoints of ``rewards.testing`` (the same
loading path as the released files). ``--size full`` builds the open_clip rewards (hpsv2,
hpsv2.1, clip) at their real ViT-H-14 size with random weights; that is a GPU measurement (about
1B parameters), and this script refuses it on CPU. Each reward runs in its own subprocess so its
peak memory is its own: on CPU the peak resident set size of that process (which includes the
Python runtime and the imported libraries), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FULL_SIZE_REWARDS = ("hpsv2", "hpsv2.1", "clip")


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def measure(name: str, size: str, device: str, batch: int, frames: int, resolution: int, repeats: int) -> dict:
    """Build ``name``, then time ``repeats`` forward+backward passes on a (batch, 3, frames, res, res) video."""
    from rewards import build_reward
    from rewards.testing import TINY_REWARD_KWARGS

    with tempfile.TemporaryDirectory() as folder:
        kwargs = TINY_REWARD_KWARGS[name](Path(folder)) if size == "tiny" else {"checkpoint": None}
        reward = build_reward(name, **kwargs).to(device)
    parameters = sum(p.numel() for p in reward.parameters())
    prompts = ["a corgi running on the beach at sunset"] * batch
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(batch, 3, frames, resolution, resolution, device=device) * 2 - 1

    def step() -> None:
        pixels = video.clone().requires_grad_(True)
        reward(pixels, prompts, generator).mean().backward()

    step()  # warm-up (lazy initialisation, allocator)
    rss_before = _rss_mb()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    result = {
        "reward": name,
        "size": size,
        "parameters": parameters,
        "frames_scored": len(reward.frame_indices(frames, torch.Generator().manual_seed(0))),
        "forward_backward_ms": round(seconds * 1000, 2),
    }
    if device == "cuda":
        result["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        result["rss_before_mb"] = round(rss_before, 1)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", help="rewards to measure (default: all with tiny checkpoints)")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=None, help="video side (default: 64 tiny, 256 full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one reward in this process
    args = parser.parse_args()
    resolution = args.resolution or (64 if args.size == "tiny" else 256)

    if args.one:
        result = measure(args.one, args.size, args.device, args.batch, args.frames, resolution, args.repeats)
        print(json.dumps(result))
        return

    from rewards.testing import TINY_REWARD_KWARGS

    if args.size == "full" and args.device == "cpu":
        sys.exit("--size full measures ViT-H-14 rewards (about 1B parameters): run it on a GPU (--device cuda)")
    names = args.names or (sorted(TINY_REWARD_KWARGS) if args.size == "tiny" else list(FULL_SIZE_REWARDS))
    results = []
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--size", args.size, "--device", args.device,
                   "--batch", str(args.batch), "--frames", str(args.frames), "--resolution", str(resolution),
                   "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"reward": name, "error": done.stderr.strip().splitlines()[-1]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {
        "machine": {"device": args.device, "cpu": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "input": {"batch": args.batch, "frames": args.frames, "resolution": resolution, "repeats": args.repeats},
        "results": results,
    }
    if args.size == "tiny":
        report["note"] = ("tiny random models on the device above; CPU memory is the process's resident set "
                          "(dominated by the Python runtime and libraries at this size, so it does not rank the "
                          "rewards); full-size (ViT-H-14) figures need a GPU, which this machine lacks: "
                          "python bench/bench_rewards.py --size full --device cuda")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
