"""Torch thread settings for the quick start's training on a shared CPU machine: seconds per step
with the machine as it is, and with one extra busy process competing for the cores.

    python bench/bench_threads.py [--steps 15 --rounds 2 --settings 1,2,2p]

Each setting trains the quick start's recipe (``configs/miniworld.yaml``, batch 4) for ``--steps``
steps in a fresh process: ``1`` and ``2`` are ``torch.set_num_threads``; ``2p`` is two threads
with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning). The time per
step is the median of the trainer's per-window ``s/step`` log lines after the first window
(warm-up). Within a round every setting runs alone and then beside ``python -c 'while True:
pass'``, one after another, so the machine's own load affects all of them alike; compare within
the JSON rather than with other runs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"step \d+/\d+: loss \S+, ([0-9.]+) s/step")


def train_seconds_per_step(setting: str, steps: int, data: Path, out: Path) -> list[float]:
    threads = setting.rstrip("p")
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONPATH=str(REPO))
    if setting.endswith("p"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, "-m", "t2v_turbo", "train", str(REPO / "configs" / "miniworld.yaml"),
               f"train.max_steps={steps}", "train.log_every=3", f"output_dir={out}", f"data.folder={data}",
               "data.num_videos=64", "logging.tensorboard=false"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if run.returncode:
        raise RuntimeError(f"training with {setting} threads failed:\n{run.stderr[-3000:]}")
    return [float(x) for x in STEP_LINE.findall(run.stderr)][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default="1,2,2p", help="comma-separated: N threads, Np = N threads with passive OpenMP wait")
    args = parser.parse_args()
    settings = args.settings.split(",")
    samples: dict[str, list[float]] = {f"{s}/{c}": [] for s in settings for c in ("as_is", "busy")}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for round_index in range(args.rounds):
            for competing in ("as_is", "busy"):
                for setting in settings:
                    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing == "busy" else None
                    try:
                        load.append(os.getloadavg()[0])
                        measured = train_seconds_per_step(setting, args.steps, tmp / "data",
                                                          tmp / f"run-{round_index}-{competing}-{setting}")
                        samples[f"{setting}/{competing}"] += measured
                        print(f"round {round_index} {competing} threads {setting}: s/step {measured}", file=sys.stderr)
                    finally:
                        if busy is not None:
                            busy.kill()
                            busy.wait()
                    time.sleep(2)
    median = {key: round(statistics.median(values), 3) for key, values in samples.items()}
    print(json.dumps({
        "bench": "threads",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, no GPU",
        "load_average_1min_during": [round(min(load), 2), round(max(load), 2)],
        "steps": args.steps, "rounds": args.rounds, "batch": 4,
        "seconds_per_step_median": median,
        "slowdown_busy_over_as_is": {s: round(median[f"{s}/busy"] / median[f"{s}/as_is"], 2) for s in settings},
        "seconds_per_step_all": {k: [round(x, 2) for x in v] for k, v in samples.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
