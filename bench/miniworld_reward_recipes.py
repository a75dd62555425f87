"""VADER and InstructVideo on the mini world: reward and MiniBench before / after, over seeds; and the cost.

Every run is the normal trainer (``t2v-turbo train configs/miniworld_vader.yaml`` /
``configs/miniworld_instructvideo.yaml`` with overrides), from the shipped teacher (a full-step model with
LoRA, sampled with DDIM + CFG) or from the shipped student (its LoRA and guidance layer trained further,
sampled with its 4 consistency steps), on whatever assets ``miniworld.assets`` ships. Each trained model
and each starting model samples the held-out evaluation prompts with one fixed generator (the same noise
before and after); the videos are scored by both mini-world rewards and by MiniBench per dimension.

Cost (``--cost``): median step time and the activation memory kept for backward (the bytes of the tensors
autograd saves during one step, parameters excluded) of VADER with K = 1 vs K = all steps and of
InstructVideo vs VADER, each variant in its own process (its max RSS is reported too).

    python bench/miniworld_reward_recipes.py --seeds 0,1,2 --steps 20 --num-prompts 18 [--write-results]
    python bench/miniworld_reward_recipes.py --cost --cost-steps 5 [--write-results]

(the sizes of the tables in bench/RESULTS.md; about 70 min on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDENT = ["model={_component_: miniworld.assets.shipped_student_model}", "objective.num_inference_steps=null",
           "objective.guidance_scale=null", "validation.num_inference_steps=4"]
LOW_LR = ["optimizer.lr=1.0e-4"]
VIDEO = ["rewards=[{name: miniworld-video, weight: 1.0, loss: linear, target: 1.0}]", "objective.decode_frames=all"]
#: key -> (row name, config, overrides, start: teacher | student, optimised reward)
RUNS = {
    "vader-img-teacher": ("VADER, image reward", "miniworld_vader.yaml", [], "teacher", "image"),
    "vader-vid-teacher": ("VADER, video reward", "miniworld_vader.yaml", VIDEO, "teacher", "video"),
    "iv-teacher": ("InstructVideo (SegVR + TAR), image reward", "miniworld_instructvideo.yaml", [], "teacher", "image"),
    "iv-notar-teacher": ("InstructVideo without TAR, image reward", "miniworld_instructvideo.yaml",
                         ["objective.tar_lambda=null"], "teacher", "image"),
    "vader-img-student": ("VADER, image reward", "miniworld_vader.yaml", STUDENT, "student", "image"),
    "vader-vid-student": ("VADER, video reward", "miniworld_vader.yaml", VIDEO + STUDENT, "student", "video"),
    "iv-student": ("InstructVideo (SegVR + TAR), image reward", "miniworld_instructvideo.yaml", STUDENT, "student",
                   "image"),
    # the student's LoRA covers every layer and is already distilled: the same runs at a tenth of the learning rate
    "vader-img-student-lr1e-4": ("VADER, image reward, lr 1e-4", "miniworld_vader.yaml", STUDENT + LOW_LR, "student",
                                 "image"),
    "vader-vid-student-lr1e-4": ("VADER, video reward, lr 1e-4", "miniworld_vader.yaml", VIDEO + STUDENT + LOW_LR,
                                 "student", "video"),
    "iv-student-lr1e-4": ("InstructVideo (SegVR + TAR), image reward, lr 1e-4", "miniworld_instructvideo.yaml",
                          STUDENT + LOW_LR, "student", "image"),
}
GUIDANCE = 4.0
BEGIN, END = "<!-- reward-recipes:begin -->", "<!-- reward-recipes:end -->"
COST_BEGIN, COST_END = "<!-- reward-recipes-cost:begin -->", "<!-- reward-recipes-cost:end -->"


# ---- training ------------------------------------------------------------------------------
def train_command(key: str, seed: int, steps: int, out: Path) -> list[str]:
    _, config, overrides, _, _ = RUNS[key]
    data = [f"data.folder={out.parent.parent / 'data'}"] if "instructvideo" in config else []
    return [sys.executable, "-m", "t2v_turbo.cli", "train", str(REPO / "configs" / config), f"seed={seed}",
            f"output_dir={out}", f"train.max_steps={steps}", "logging.tensorboard=true", *data, *overrides]


def train_all(jobs: list[tuple[str, int]], steps: int, root: Path, parallel: int) -> dict:
    """Train the (run, seed) jobs not trained yet, ``parallel`` at a time (1 torch thread each)."""
    from miniworld.assets import training_dataset

    training_dataset(root / "data", num_videos=1000, seed=0)  # written once, before runs that read it
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    from miniworld.report import check_reusable_run, run_commands

    pending = []
    for key, seed in jobs:
        run = root / key / f"seed{seed}"
        if model_folder(run).is_dir():
            check_reusable_run(run, steps)
        else:
            pending.append((key, seed))
    commands = {job: (train_command(*job, steps, root / job[0] / f"seed{job[1]}"), root / job[0] / f"seed{job[1]}" / "train.log")
                for job in pending}
    seconds = run_commands(commands, parallel, env=env, cwd=REPO)
    return {f"{key}/seed{seed}": value for (key, seed), value in seconds.items()}


def model_folder(run: Path) -> Path:
    """The saved model of a run: ``student/`` (from the student) or ``model/`` (a full-step model)."""
    return run / "student" if (run / "student").is_dir() else run / "model"


# ---- evaluation ----------------------------------------------------------------------------
class Scorer:
    """Both mini-world rewards and MiniBench on uint8 videos of the evaluation prompts."""

    def __init__(self):
        import torch

        from rewards.base import build_reward

        self.rewards = {"image": build_reward("miniworld-image", num_frames=8), "video": build_reward("miniworld-video")}
        self.torch = torch

    def __call__(self, videos, prompts) -> dict:
        from miniworld import minibench, world

        torch = self.torch
        pixels = world.to_pixels(videos)
        scores = {}
        with torch.no_grad():
            for name, reward in self.rewards.items():
                values = [reward(pixels[i:i + 15], prompts[i:i + 15], torch.Generator().manual_seed(0))
                          for i in range(0, len(prompts), 15)]
                scores[f"reward_{name}"] = float(torch.cat(values).mean())
        report = minibench.evaluate(videos, prompts)["overall"]
        return {**scores, **{d: report[d] for d in (*minibench.DIMENSIONS, "total")}}


def sample(pipeline, prompts, steps: int):
    from miniworld.report import sample_videos

    return sample_videos(pipeline, prompts, seed=0, steps=steps, guidance_scale=GUIDANCE, batch_size=15)


def evaluate_start(start: str, prompts, eval_steps: int, scorer: Scorer) -> dict:
    from miniworld.assets import load_shipped_student, load_teacher
    from t2v_turbo.pipeline import TeacherPipeline

    if start == "teacher":
        return scorer(sample(TeacherPipeline(load_teacher()), prompts, eval_steps), prompts)
    return scorer(sample(load_shipped_student(), prompts, 4), prompts)


def evaluate_model(folder: Path, prompts, eval_steps: int, scorer: Scorer) -> dict:
    from t2v_turbo.pipeline import load_student_pipeline

    pipeline = load_student_pipeline(folder)
    return scorer(sample(pipeline, prompts, 4 if pipeline.meta.is_student else eval_steps), prompts)


# ---- cost ----------------------------------------------------------------------------------
COST_VARIANTS = {
    "vader-k1": ("VADER, K = 1 of 10 DDIM steps", "miniworld_vader.yaml", []),
    "vader-kall": ("VADER, K = all 10 DDIM steps", "miniworld_vader.yaml", ["objective.backprop_steps=10"]),
    "instructvideo": ("InstructVideo, 12 of 20 steps, K = 1", "miniworld_instructvideo.yaml", []),
    "vader-student-k1": ("VADER on the student, K = 1 of 4 steps", "miniworld_vader.yaml", STUDENT),
    "vader-student-kall": ("VADER on the student, K = all 4 steps", "miniworld_vader.yaml",
                           STUDENT + ["objective.backprop_steps=4"]),
}


def measure_variant(key: str, steps: int, root: Path) -> dict:
    """Median step time and activation bytes saved for backward of one ``TrainingRecipe.train_step``."""
    import torch

    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import load_config

    torch.set_num_threads(1)
    _, config, overrides = COST_VARIANTS[key]
    data = [f"data.folder={root / 'data'}"] if "instructvideo" in config else []
    cfg = load_config(REPO / "configs" / config, [f"output_dir={root / key}", "logging.tensorboard=false", *data,
                                                  *overrides])
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    params = {p.untyped_storage().data_ptr() for m in [recipe.network, *recipe.adapter.modules().values()]
              for p in m.parameters()}
    params |= {p.untyped_storage().data_ptr() for t in recipe.objective.run.rewards for p in t.reward.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = max(saved.get(ptr, 0), tensor.untyped_storage().nbytes())
        return tensor

    data = iter(recipe.dataloader)
    recipe.train_step(next(data))  # warm-up
    times, activation = [], []
    for _ in range(steps):
        batch = next(data)
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            recipe.train_step(batch)
        times.append(time.perf_counter() - start)
        activation.append(sum(saved.values()))
    recipe.cleanup()
    return {"variant": key, "name": COST_VARIANTS[key][0], "step_seconds_median": statistics.median(times),
            "step_seconds_min": min(times), "saved_for_backward_mib": max(activation) / 2**20,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": steps,
            "batch_size": cfg["dataloader"]["batch_size"]}


def run_cost(steps: int, root: Path) -> dict:
    from miniworld.assets import training_dataset

    training_dataset(root / "data", num_videos=1000, seed=0)
    results = {}
    for key in COST_VARIANTS:
        cmd = [sys.executable, __file__, "--cost-variant", key, "--cost-steps", str(steps), "--out", str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
        if proc.returncode:
            raise SystemExit(f"cost variant {key} failed:\n{proc.stderr[-3000:]}")
        results[key] = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = lambda a, b, field: results[a][field] / results[b][field]  # noqa: E731
    return {
        "machine": "2-core CPU shared with other jobs, 1 torch thread per variant, no GPU",
        "variants": results,
        "ratios": {
            "vader_kall_over_k1_time": ratio("vader-kall", "vader-k1", "step_seconds_median"),
            "vader_kall_over_k1_memory": ratio("vader-kall", "vader-k1", "saved_for_backward_mib"),
            "instructvideo_over_vader_k1_time": ratio("instructvideo", "vader-k1", "step_seconds_median"),
            "instructvideo_over_vader_k1_memory": ratio("instructvideo", "vader-k1", "saved_for_backward_mib"),
            "student_kall_over_k1_time": ratio("vader-student-kall", "vader-student-k1", "step_seconds_median"),
            "student_kall_over_k1_memory": ratio("vader-student-kall", "vader-student-k1", "saved_for_backward_mib"),
        },
    }


# ---- report --------------------------------------------------------------------------------
METRICS = ("reward_image", "reward_video", "background", "colour", "shape", "motion", "single_object",
           "temporal_consistency", "total")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(per_seed: dict[str, dict[int, dict]]) -> dict:
    return {key: {m: mean_std([r[m] for r in seeds.values()]) for m in METRICS} for key, seeds in per_seed.items()}


def checks(starts: dict, agg: dict) -> list[dict]:
    """The issue's expected shape, each with the numbers it was judged on."""
    out = []

    def delta(key, metric):
        start = RUNS[key][3]
        return agg[key][metric][0] - starts[start][metric]

    for key in agg:
        name, _, _, start, reward = RUNS[key]
        label = f"{name}, from the {start}"
        if reward == "image":
            colour, shape = delta(key, "colour"), delta(key, "shape")
            out.append({"check": f"{label}: optimising the image reward raises colour and shape (neither falls, "
                                 "their sum rises)", "colour": colour, "shape": shape,
                        "holds": min(colour, shape) >= 0 and colour + shape > 0})
        else:
            out.append({"check": f"{label}: optimising the video reward raises motion", "motion": delta(key, "motion"),
                        "holds": delta(key, "motion") > 0})
        tc = delta(key, "temporal_consistency")
        single = delta(key, "single_object")
        out.append({"check": f"{label}: nothing collapses (temporal consistency within 0.05, single object not down "
                             "by more than 0.05)", "temporal_consistency": tc, "single_object": single,
                    "holds": tc >= -0.05 and single >= -0.05})
    if "iv-teacher" in agg and "iv-notar-teacher" in agg:
        with_tar, without = agg["iv-teacher"]["temporal_consistency"][0], agg["iv-notar-teacher"]["temporal_consistency"][0]
        out.append({"check": "TAR keeps temporal consistency where no-TAR lowers it", "with_tar": with_tar,
                    "without_tar": without, "start": starts["teacher"]["temporal_consistency"],
                    "holds": with_tar >= without})
    return out


def table(starts: dict, agg: dict) -> str:
    head = "| model | steps | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS)
    rows = []
    for start in ("teacher", "student"):
        rows.append(f"| **shipped {start}** (before) | 0 | " + " | ".join(f"{starts[start][m]:.3f}" for m in METRICS) + " |")
        for key, stats in agg.items():
            if RUNS[key][3] == start:
                cells = [f"{m:.3f} ± {s:.3f} ({m - starts[start][k]:+.3f})" for k, (m, s) in stats.items()]
                rows.append(f"| {RUNS[key][0]}, from the {start} | | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/miniworld-reward-recipes")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    parser.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of full-step models at evaluation (the training chain's)")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="N of the held-out prompts (a fixed draw spanning the list)")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    parser.add_argument("--cost", action="store_true", help="measure the cost ratios instead")
    parser.add_argument("--cost-steps", type=int, default=3)
    parser.add_argument("--cost-variant", choices=list(COST_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--write-results", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    root = Path(args.out).resolve()
    if args.cost_variant:
        print(json.dumps(measure_variant(args.cost_variant, args.cost_steps, root)))
        return 0
    if args.cost:
        result = run_cost(args.cost_steps, root / "cost")
        print(json.dumps(result, indent=2))
        if args.write_results:
            write_cost_section(result)
        return 0

    import torch

    torch.set_num_threads(1)
    from miniworld.assets import ASSETS
    from miniworld.report import asset_fingerprint, prompt_subset
    from miniworld.world import held_out_captions

    keys, seeds = args.runs.split(","), [int(s) for s in args.seeds.split(",")]
    prompts = prompt_subset(held_out_captions(), args.num_prompts)
    t0 = time.time()
    train_seconds = train_all([(k, s) for k in keys for s in seeds], args.steps, root, args.parallel)
    scorer = Scorer()
    cache = root / "evaluation.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    settings = f"{len(prompts)} held-out prompts, eval steps {args.eval_steps}, steps {args.steps}"
    if results.get("settings") != settings:
        results = {"settings": settings, "starts": {}, "runs": {}}
    for start in ("teacher", "student"):
        if start not in results["starts"] and any(RUNS[k][3] == start for k in keys):
            results["starts"][start] = evaluate_start(start, prompts, args.eval_steps, scorer)
            cache.write_text(json.dumps(results, indent=2))
    for key in keys:
        for seed in seeds:
            name = f"{key}/seed{seed}"
            if name not in results["runs"]:
                results["runs"][name] = evaluate_model(model_folder(root / key / f"seed{seed}"), prompts,
                                                       args.eval_steps, scorer)
                cache.write_text(json.dumps(results, indent=2))
    per_seed = {k: {s: results["runs"][f"{k}/seed{s}"] for s in seeds} for k in keys}
    agg = aggregate(per_seed)
    summary = {
        "machine": "2-core CPU shared with other jobs, no GPU",
        "assets": asset_fingerprint(ASSETS),
        "settings": settings, "num_prompts": len(prompts), "seeds": seeds, "starts": results["starts"],
        "runs": {k: {m: {"mean": v[0], "std": v[1]} for m, v in stats.items()} for k, stats in agg.items()},
        "checks": checks(results["starts"], agg), "train_seconds": train_seconds, "total_seconds": time.time() - t0,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    text = table(results["starts"], agg)
    print(text)
    if args.write_results:
        write_results_section(text, summary, args)
    return 0


def write_results_section(text: str, summary: dict, args) -> None:
    from miniworld.report import write_marked_section

    lines = [
        "## Reward-gradient recipes on the mini world (bench/miniworld_reward_recipes.py)",
        "",
        f"Machine: {summary['machine']}. Assets: the mini world shipped in `miniworld/assets` when this ran "
        f"(sha256 prefixes: {', '.join(f'{k} {v}' for k, v in summary['assets'].items())}). Each run is "
        f"`t2v-turbo train configs/miniworld_vader.yaml | miniworld_instructvideo.yaml` for {args.steps} optimizer "
        "steps (batch 2, AdamW 1e-3 unless the row says lr 1e-4; from the teacher a new LoRA of rank 16 on "
        "attention q/k/v, from the student its own LoRA, rank 16 on every linear and conv layer, and its guidance "
        "layer), "
        f"seeds {summary['seeds']} (mean ± std, the change "
        "from the starting model in brackets). Evaluation: "
        f"{summary['num_prompts']} of the 45 held-out prompts (unseen colour-shape pairs; a fixed draw), "
        f"one video each with one fixed generator; full-step models DDIM {args.eval_steps} steps + CFG {GUIDANCE}, "
        f"students 4 steps at w = {GUIDANCE}. `reward_image` / `reward_video`: mean miniworld-image (all 8 frames) "
        "and miniworld-video scores; the other columns are MiniBench.",
        "",
        text,
        "Expected shape (the issue's), as measured:",
        "",
        *[f"- {'holds' if c['holds'] else '**does not hold**'}: {c['check']} ("
          + ", ".join(f"{k} {v:+.3f}" if k in ("colour", "shape", "motion", "temporal_consistency", "single_object")
                      else f"{k} {v:.3f}" for k, v in c.items() if k not in ("check", "holds")) + ")"
          for c in summary["checks"]],
    ]
    write_marked_section(REPO / "bench" / "RESULTS.md", BEGIN, END, "\n".join([BEGIN, *lines, END]))


def write_cost_section(result: dict) -> None:
    from miniworld.report import write_marked_section

    rows = ["| variant | step time median (s) | saved for backward (MiB) | max RSS (MiB) |", "|---|---|---|---|"]
    for r in result["variants"].values():
        rows.append(f"| {r['name']} | {r['step_seconds_median']:.2f} | {r['saved_for_backward_mib']:.1f} | "
                    f"{r['max_rss_mib']:.0f} |")
    q = result["ratios"]
    lines = [
        "## Cost of the reward-gradient recipes on the mini world (bench/miniworld_reward_recipes.py --cost)",
        "",
        f"Machine: {result['machine']}. Batch 2 prompts / clips of 8 frames at 32x32, one `train_step` "
        "(sampling chain, decode, reward, backward, optimizer step). \"Saved for backward\" is the activation "
        "memory a step keeps for its backward pass (tensors autograd saves, parameters excluded); max RSS is the "
        "whole process (libraries and weights included).",
        "",
        *rows,
        "",
        f"Ratios: VADER K = all / K = 1: time {q['vader_kall_over_k1_time']:.2f}x, activations "
        f"{q['vader_kall_over_k1_memory']:.2f}x; on the 4-step student: time {q['student_kall_over_k1_time']:.2f}x, "
        f"activations {q['student_kall_over_k1_memory']:.2f}x; InstructVideo / VADER (K = 1): time "
        f"{q['instructvideo_over_vader_k1_time']:.2f}x, activations {q['instructvideo_over_vader_k1_memory']:.2f}x.",
    ]
    write_marked_section(REPO / "bench" / "RESULTS.md", COST_BEGIN, COST_END, "\n".join([COST_BEGIN, *lines, COST_END]))


if __name__ == "__main__":
    sys.exit(main())
