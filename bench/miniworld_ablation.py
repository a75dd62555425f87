"""The paper's ablation on the mini world, over several training seeds; prints JSON, writes bench/RESULTS.md.

Rows: ground truth; the VAE round trip (ceiling of every latent model); the teacher (its own 50-step
sampler + CFG); 4-step students distilled with CD only (VCM), CD + image reward, CD + video reward,
CD + both (T2V-Turbo). Every student is trained by the normal trainer (``t2v-turbo train
configs/miniworld.yaml ...``) with the same steps and data; only ``rewards`` and the training ``seed``
differ. MiniBench per dimension as mean +- std over the seeds (sample std), seen / held-out, on the
shipped evaluation prompt set (every model sampled from the same noise); the sampling speed ratio (4-step
student vs 50-step CFG teacher, same batch); the paper's claims checked against the numbers; and
MiniBench of the T2V-Turbo students against their training steps, mean +- std over the seeds (``--curve-every``).

    python bench/miniworld_ablation.py [--seeds 0,1,2] [--world DIR] [--parallel 2] [--curve-every 50] [--write-results]

``--world DIR`` runs on a ``t2v-turbo miniworld build --out DIR`` (its teacher/, image_reward/ and
video_reward/) instead of the shipped assets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = {"VCM (CD only)": "vcm", "CD + image reward": "img", "CD + video reward": "vid", "T2V-Turbo (CD + both)": "both"}
#: the reward kinds of each variant; their weights and arguments are the config's (beta_img 1, beta_vid 2 in
#: configs/miniworld.yaml, the paper's VC2 setting)
REWARDS = {"vcm": (), "img": ("image",), "vid": ("video",), "both": ("image", "video")}
BEGIN, END = "<!-- miniworld-ablation:begin -->", "<!-- miniworld-ablation:end -->"


def variant_overrides(key: str, config_rewards: list[dict], world: Path | None) -> list[str]:
    """The config overrides of one variant: the config's own reward terms of its kinds (image, video), and for a
    built world its teacher and reward folders."""
    kinds = {"miniworld-image": "image", "miniworld-video": "video"}
    terms = [json.loads(json.dumps(t)) for t in config_rewards if kinds.get(t["name"]) in REWARDS[key]]
    if len(terms) != len(REWARDS[key]):
        raise ValueError(f"variant {key!r} needs the config's rewards {REWARDS[key]} (miniworld-image / miniworld-video); "
                         f"the config has {[t['name'] for t in config_rewards]}")
    if world is not None:
        for term in terms:
            term.setdefault("args", {})["checkpoint"] = str(world / f"{kinds[term['name']]}_reward")
    overrides = [f"rewards={json.dumps(terms)}"]
    return overrides + ([f"teacher.path={world / 'teacher'}"] if world is not None else [])


def run_dir(out: Path, seed: int, key: str) -> Path:
    return out / f"seed{seed}" / key


def train_all(out: Path, jobs: list[tuple[int, str]], steps: int, overrides: dict, parallel: int) -> dict:
    """Train every (seed, variant key) job whose student is not there yet, ``parallel`` at a time (one torch
    thread each); returns the wall seconds of each job, kept in a ``.seconds`` file beside its log so that a
    rerun over trained students still reports them. A failed run stops the others and raises, naming its log."""
    from miniworld.report import run_commands

    commands = {
        (seed, key): ([sys.executable, "-m", "t2v_turbo.cli", "train", str(REPO / "configs" / "miniworld.yaml"),
                       f"output_dir={run_dir(out, seed, key)}", f"data.folder={out / 'data'}", f"seed={seed}",
                       f"train.max_steps={steps}", "logging.tensorboard=true", *overrides[(seed, key)]],
                      run_dir(out, seed, key).with_suffix(".log"))
        for seed, key in jobs if not (run_dir(out, seed, key) / "student" / "student.json").is_file()}
    seconds = run_commands(commands, parallel, env=dict(os.environ, OMP_NUM_THREADS="1"))
    for job, value in seconds.items():
        run_dir(out, *job).with_suffix(".seconds").write_text(f"{value}\n")
    files = {job: run_dir(out, *job).with_suffix(".seconds") for job in jobs}
    return {job: float(path.read_text()) for job, path in files.items() if path.is_file()}


def claims(stats: dict, teacher: dict, speedup: float | None) -> dict:
    """The issue's targets for the students, as measured (means and stds over seeds)."""
    def mean(key, part="overall", dim="total"):
        return stats[key][part][dim][0]

    def std(key, dim="total"):
        return stats[key]["overall"][dim][1]

    best_other = max(mean(k) for k in ("vcm", "img", "vid"))
    motion_gain = mean("vid", dim="motion") - mean("vcm", dim="motion")
    motion_noise = 2 * max(std("vid", "motion"), std("vcm", "motion"))
    colour_shape = {k: mean(k, dim="colour") + mean(k, dim="shape") for k in ("vcm", "img")}
    return {
        "vcm_over_teacher": {"value": mean("vcm") / teacher["overall"]["total"], "target": ">= 0.9",
                             "met": mean("vcm") >= 0.9 * teacher["overall"]["total"]},
        "t2v_turbo_minus_teacher": {"value": mean("both") - teacher["overall"]["total"], "target": ">= 0",
                                    "met": mean("both") >= teacher["overall"]["total"]},
        "video_reward_motion_gain_over_vcm": {"value": motion_gain, "two_std": motion_noise, "target": "> 2 std",
                                              "met": motion_gain > motion_noise},
        "image_reward_colour_plus_shape_gain_over_vcm": {"value": colour_shape["img"] - colour_shape["vcm"],
                                                         "target": "> 0", "met": colour_shape["img"] > colour_shape["vcm"]},
        "t2v_turbo_minus_best_other_student": {"value": mean("both") - best_other, "one_std": std("both"),
                                               "target": "best, or within one std of the best",
                                               "met": mean("both") >= best_other - std("both")},
        "speedup_vs_teacher": {"value": speedup, "target": ">= 20", "met": speedup is not None and speedup >= 20},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/miniworld-ablation")
    parser.add_argument("--steps", type=int, default=None, help="student training steps (default: configs/miniworld.yaml)")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the config's seed)")
    parser.add_argument("--variants", default=",".join(KEYS.values()), help="subset of vcm,img,vid,both")
    parser.add_argument("--world", default=None, help="a `t2v-turbo miniworld build` output folder instead of the shipped assets")
    parser.add_argument("--parallel", type=int, default=2, help="student trainings at once (one torch thread each)")
    parser.add_argument("--curve-every", type=int, default=0,
                        help="save every seed's T2V-Turbo student every N steps and evaluate each (0: no curve)")
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
    from miniworld.assets import (
        TEACHER,
        asset_path,
        evaluation_prompts,
        load_teacher,
        teacher_scores_path,
        training_dataset,
    )
    from t2v_turbo.config import load_config
    from t2v_turbo.pipeline import load_student_pipeline

    cfg = load_config(REPO / "configs" / "miniworld.yaml", args.overrides)
    steps = args.steps or cfg["train"]["max_steps"]
    guidance = float(cfg["validation"]["guidance_scale"])
    teacher_guidance = args.teacher_guidance or guidance
    sample_seed = cfg["seed"]  # every model samples the evaluation prompts from the same noise
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [sample_seed]
    world = Path(args.world).resolve() if args.world else None
    teacher_dir = world / "teacher" if world else asset_path(cfg["teacher"].get("path"), TEACHER)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in KEYS.values() if k in args.variants.split(",")]
    names = {k: n for n, k in KEYS.items()}
    prompts = evaluation_prompts()[: args.num_prompts]
    jobs = [(seed, key) for seed in seeds for key in keys]
    overrides = {job: args.overrides + variant_overrides(job[1], cfg["rewards"], world) for job in jobs}
    curve_jobs = [(seed, "both") for seed in seeds] if args.curve_every and "both" in keys else []
    for job in curve_jobs:
        overrides[job] += [f"train.checkpoint_every={args.curve_every}", "train.keep_checkpoints=1000"]

    t0 = time.time()
    # the training split is written once, before any run, so parallel runs never race on it
    training_dataset(out / "data", num_videos=cfg["data"]["num_videos"], seed=cfg["data"]["seed"])
    trainings: dict = {}
    failures: list[Exception] = []

    def train():
        try:
            trainings.update(train_all(out, jobs, steps, overrides, args.parallel))
        except Exception as error:  # re-raised in the main thread after the teacher's evaluation
            failures.append(error)

    trainer = threading.Thread(target=train)
    trainer.start()  # the teacher samples while the students train
    reports = {"ground truth": minibench.ground_truth_report(prompts)}
    adapter = load_teacher(teacher_dir)
    reports["VAE reconstruction of ground truth (ceiling of latent models)"] = rp.compact(
        minibench.evaluate(rp.vae_roundtrip(adapter, prompts, seed=sample_seed), prompts))
    teacher_json = out / "teacher_minibench.json"
    teacher_weights = rp.asset_fingerprint(teacher_dir)
    settings = (f"50 steps, CFG {teacher_guidance}, seed {sample_seed}, one video per prompt, {len(prompts)} prompts, "
                f"teacher weights {teacher_weights}")
    cached = json.loads(teacher_json.read_text()) if teacher_json.is_file() else {}
    if cached.get("settings") == settings:
        reports["teacher (50 steps + CFG)"] = cached["report"]
    else:
        videos = rp.sample_teacher(adapter, prompts, seed=sample_seed, guidance_scale=teacher_guidance)
        rp.write_videos(out / "videos" / "teacher", videos, prompts)
        reports["teacher (50 steps + CFG)"] = rp.compact(minibench.evaluate_folder(out / "videos" / "teacher"))
        rp.save_json(teacher_json, {"settings": settings, "report": reports["teacher (50 steps + CFG)"]})
    trainer.join()
    if failures:
        raise failures[0]
    if args.write_teacher_cache:  # beside the teacher folder, where the quick start reads it
        rp.save_json(teacher_scores_path(teacher_dir), json.loads(teacher_json.read_text()))

    per_seed: dict[str, list[dict]] = {k: [] for k in keys}
    speed = None
    for seed, key in jobs:
        pipe = load_student_pipeline(run_dir(out, seed, key) / "student")
        videos = rp.sample_videos(pipe, prompts, seed=sample_seed, guidance_scale=guidance)
        folder = out / "videos" / f"seed{seed}" / key
        rp.write_videos(folder, videos, prompts)
        per_seed[key].append(rp.compact(minibench.evaluate_folder(folder)))
        if speed is None:
            speed = rp.time_sampling(pipe, adapter, prompts[:8], guidance_scale=guidance, repeats=3)
    curve_reports: dict[int, list[dict]] = {}  # step -> one report per seed
    for job in curve_jobs:
        for folder in run_dir(out, *job).glob("checkpoint-*"):
            pipe = load_student_pipeline(folder / "student")
            report = minibench.evaluate(rp.sample_videos(pipe, prompts, seed=sample_seed, guidance_scale=guidance), prompts)
            curve_reports.setdefault(int(folder.name.split("-")[1]), []).append(rp.compact(report))
    curve = [{"step": step, "seeds": len(reports_), **rp.seed_statistics(reports_)["overall"]}
             for step, reports_ in sorted(curve_reports.items())]
    if curve:
        rp.plot_minibench_curve(curve, out / "minibench_vs_steps.png")

    stats = {key: rp.seed_statistics(values) for key, values in per_seed.items()}
    result = {
        "machine": "2-core CPU (shared with other jobs), no GPU",
        "world": f"the build `{world.name}`" if world else "shipped assets", "teacher_weights": teacher_weights,
        "student_steps": steps, "batch_size": cfg["dataloader"]["batch_size"],
        "learning_rate": f"{cfg['optimizer']['lr']:g}, {cfg['lr_scheduler']['name']} schedule", "seeds": seeds, "sample_seed": sample_seed,
        "student_guidance_scale": guidance, "teacher_guidance_scale": teacher_guidance,
        "rewards": {t["name"]: t["weight"] for t in cfg["rewards"]},
        "reward_max_noise": cfg["objective"].get("reward_max_noise"),
        "train_seconds": {f"seed{s}/{k}": v for (s, k), v in trainings.items()},
        "speed": speed, "total_seconds": time.time() - t0,
        "minibench": {n: {k: r[k] for k in ("overall", "seen", "held_out", "unreadable")} for n, r in reports.items()},
        "students": {names[k]: {"per_seed": per_seed[k], "mean_std": stats[k]} for k in keys},
        "claims": claims(stats, reports["teacher (50 steps + CFG)"], speed and speed["speedup"]) if len(keys) == 4 else None,
        "minibench_vs_steps": curve,
    }
    rp.save_json(out / "ablation.json", result)
    print(json.dumps(result, indent=2))
    table = rp.results_table(reports) + "\n" + rp.seeds_table({f"{names[k]}, 4 steps": stats[k] for k in keys})
    if args.write_results:
        write_results_section(table, result)
    print(table)
    return 0


def write_results_section(table: str, result: dict) -> None:
    """Replace the mini-world section of bench/RESULTS.md (between the markers), or append it."""
    speed, claims_ = result["speed"], result["claims"] or {}
    body = [
        BEGIN,
        "## Mini world: the paper's ablation (bench/miniworld_ablation.py)",
        "",
        f"Machine: {result['machine']}. World: {result['world']}. Students: LoRA, {result['student_steps']} steps, "
        f"batch {result['batch_size']}, lr {result['learning_rate']}, training seeds {', '.join(map(str, result['seeds']))}, sampled with 4 steps at "
        f"guidance {result['student_guidance_scale']}; teacher: its 50-step sampler, CFG {result['teacher_guidance_scale']}. "
        f"MiniBench on the 90 evaluation prompts (45 held-out, 45 seen), one video each, every model from the noise of "
        f"seed {result['sample_seed']}; students as mean +- std over the training seeds (sample std). Rewards (weight): "
        + ", ".join(f"{name} {weight:g}" for name, weight in result["rewards"].items())
        + (f", scoring the samples with noise sigma <= {result['reward_max_noise']:g} only (`objective.reward_max_noise`)."
           if result["reward_max_noise"] is not None else ", scoring every sample (the paper)."),
        "",
        table,
        (f"Sampling speed (best of 3), batch of {speed['batch']}: 4-step student {speed['student_seconds']:.2f} s, "
         f"50-step CFG teacher {speed['teacher_seconds']:.2f} s: **{speed['speedup']:.1f}x**." if speed else ""),
        "",
    ]
    if claims_:
        body += ["| claim | measured | target | met |", "|---|---|---|---|"]
        body += [f"| {name} | {c['value']:.3f} | {c['target']} | {'yes' if c['met'] else '**no**'} |"
                 for name, c in claims_.items() if c["value"] is not None]
        body.append("")
    if result["minibench_vs_steps"]:
        body += ["MiniBench of the T2V-Turbo students against their training steps, mean ± std over the seeds "
                 "(`minibench_vs_steps.png` in the run folder):", "",
                 "| step | seeds | total | colour | shape | motion |", "|---|---|---|---|---|---|"]
        body += [f"| {p['step']} | {p['seeds']} | " + " | ".join(f"{p[k][0]:.3f} ± {p[k][1]:.3f}"
                                                               for k in ("total", "colour", "shape", "motion")) + " |"
                 for p in result["minibench_vs_steps"]]
        body.append("")
    body += ["Training wall time per student (s, runs in parallel on the shared machine): "
             + ", ".join(f"{k} {v:.0f}" for k, v in result["train_seconds"].items()), "", END]
    from miniworld.report import write_marked_section

    write_marked_section(REPO / "bench" / "RESULTS.md", BEGIN, END, "\n".join(body))


if __name__ == "__main__":
    sys.exit(main())
