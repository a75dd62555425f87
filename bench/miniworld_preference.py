"""Preference recipes on the mini world, 3 seeds; prints JSON, writes its section of bench/RESULTS.md.

1. Reward modelling (VideoAlign's ablation in shape): the mini-world reward model trained on ground-truth
   preference pairs with BTT (theta 5), BT and regression; held-out pairwise accuracy without and with ties,
   per dimension and overall (``t2v-turbo train-reward configs/miniworld_reward_model.yaml``).
2. Preference optimisation of the shipped 4-step student towards text alignment (TA): offline DPO with
   constant beta and with beta_t, online DPO (pairs sampled from the policy, chosen by the seed's BTT reward
   model, at the same number of clips per step as offline DPO) and RWR (weights from the same reward model);
   MiniBench on the evaluation prompts (held-out compositions and all), against the shipped student.
3. Reward guidance: the shipped student sampled with a reward model on noisy latents (trained on the same
   pairs) steering its steps towards TA, at guidance scales 0 and ``--guidance-scale``, without training.

Everything runs through the recipes' own classes (``RewardModelRecipe``, ``TrainingRecipe``) with the configs
in configs/; finished runs are reused, so the script can be stopped and restarted.

    python bench/miniworld_preference.py [--seeds 0,1,2] [--rm-steps 1000] [--steps 200] [--write-results]

The table in bench/RESULTS.md: ``--rm-steps 120 --steps 40 --num-prompts 30`` (about 70 min on 2 shared CPU
cores); processes given different ``--seeds`` can run side by side once the seeds' reward models exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = REPO / "configs"
LOSSES = ("btt", "bt", "reg")
TA_DIMENSIONS = ("colour", "shape", "background")
BEGIN, END = "<!-- miniworld-preference:begin -->", "<!-- miniworld-preference:end -->"


def train_reward_model(out: Path, seed: int, loss: str, steps: int, pairs: Path, extra: list[str]) -> dict:
    from distill.reward_model import RewardModelRecipe
    from miniworld.report import check_reusable_run
    from t2v_turbo.config import load_config

    if (out / "eval.json").is_file():
        check_reusable_run(out, steps)
    else:
        cfg = load_config(CONFIGS / "miniworld_reward_model.yaml", [
            f"output_dir={out}", f"seed={seed}", f"model.seed={seed}", f"loss.name={loss}", f"train.max_steps={steps}",
            f"data.folder={pairs}", f"eval_data.folder={pairs}", "train.checkpoint_every=0", *extra])
        recipe = RewardModelRecipe(cfg)
        recipe.setup()
        recipe.train()
    return json.loads((out / "eval.json").read_text())


def train_policy(out: Path, config: str, seed: int, steps: int, pairs: Path, overrides: list[str]) -> Path:
    """A student trained by ``TrainingRecipe`` from ``config``; returns its folder (reused when present)."""
    from distill.trainer import run_training
    from miniworld.report import check_reusable_run
    from t2v_turbo.config import load_config

    folder = out / "student"
    if (folder / "student.json").is_file():
        check_reusable_run(out, steps)
    else:
        data_folder = [] if "online" in config else [f"data.folder={pairs}"]
        run_training(load_config(CONFIGS / config, [f"output_dir={out}", f"seed={seed}", f"train.max_steps={steps}",
                                                    "train.log_every=10", *data_folder, *overrides]))
    return folder


def minibench_of(folder: Path | None, prompts: list[str], seed: int, guidance=None, scale: float = 0.0) -> dict:
    """MiniBench of a student (default: the shipped one) on ``prompts``, sampled with ``seed`` (4 steps, w 4)."""
    from miniworld import minibench
    from miniworld import report as rp
    from miniworld.assets import STUDENT
    from t2v_turbo.pipeline import load_student_pipeline

    pipe = load_student_pipeline(folder or STUDENT)
    factory = guidance(pipe.adapter) if guidance is not None else None
    videos = rp.sample_videos(pipe, prompts, seed=seed, guidance_scale=4.0, reward_guidance=factory,
                              reward_guidance_scale=scale)
    return rp.compact(minibench.evaluate(videos, prompts))


def cached_minibench(path: Path, folder: Path | None, prompts: list[str], seed: int, guidance=None,
                     scale: float = 0.0) -> dict:
    """``minibench_of``'s report, kept in ``path`` for these ``prompts`` (one file per row and seed, so processes
    running different seeds of this bench never write the same file)."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["prompts"] == prompts:
            return saved["report"]
    report = minibench_of(folder, prompts, seed, guidance, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prompts": prompts, "report": report}))
    return report


def latent_guidance(model_folder: Path):
    """adapter -> (prompts -> r(z_t, t)): TA of the latent reward model, for ``sample_videos``."""
    def build(adapter):
        from rewards.preference_model import load_preference_model
        from t2v_turbo.pipeline import sampler_noise_level

        model, _ = load_preference_model(model_folder, teacher=adapter)
        return lambda prompts: model.guidance(prompts, {"TA": 1.0}, lambda t: sampler_noise_level(adapter, t))

    return build


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"  # the sample std


def accuracy_table(results: dict) -> str:
    dims = ["VQ", "MQ", "TA", "overall"]
    lines = ["| loss | " + " | ".join(f"{d} w/o ties | {d} w/ ties" for d in dims) + " |",
             "|---|" + "---|---|" * len(dims)]
    for loss in LOSSES:
        runs = results["reward_models"][loss]
        cells = []
        for d in dims:
            cells.append(mean_std([r["accuracy"][d]["without_ties"] for r in runs]))
            cells.append(mean_std([r["accuracy"][d]["with_ties"] for r in runs]))
        lines.append(f"| {loss.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def minibench_table(rows: dict[str, list[dict]], split: str) -> str:
    from miniworld.minibench import DIMENSIONS

    cols = list(DIMENSIONS) + ["total"]
    lines = [f"| model ({split}) | TA dims (mean) | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, reports in rows.items():
        ta_dims = [[r[split][d] for d in TA_DIMENSIONS] for r in reports]
        ta = mean_std([float(np.mean(v)) for v in ta_dims if None not in v])  # None: no prompt of the split
        lines.append(f"| {name} | {ta} | " + " | ".join(mean_std([r[split][c] for r in reports]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


OTHER_DIMENSIONS = ("motion", "single_object", "temporal_consistency")


def checks(results: dict) -> list[dict]:
    """The issues' expected shape on the held-out prompts (all drawn prompts when none is held out; means over
    seeds), each with the numbers it was judged on."""
    reports = results["minibench"]
    split = "held_out" if results["prompts"]["held_out"] else "overall"
    names = list(reports)
    shipped, constant, beta_t, online, rwr, guided = names

    def mean(name, dims):
        return float(np.mean([np.mean([r[split][d] for d in dims]) for r in reports[name]]))

    def delta(name, dims=TA_DIMENSIONS):
        return mean(name, dims) - mean(shipped, dims)

    out = [{"check": f"{name} raises the preferred dimension (TA dims) on held-out prompts", "TA_dims": delta(name),
            "holds": delta(name) > 0} for name in (constant, beta_t, online, rwr)]
    out.append({"check": "online DPO vs offline DPO (constant beta) at equal clips per step: online raises TA dims "
                         "at least as much", "online": delta(online), "offline": delta(constant),
                "holds": delta(online) >= delta(constant)})
    for name in (constant, beta_t):
        changes = {d: delta(name, (d,)) for d in OTHER_DIMENSIONS}
        out.append({"check": f"{name}: the other dimensions do not fall by more than 0.05 (reward-hacking check)",
                    **changes, "holds": min(changes.values()) >= -0.05})
    out.append({"check": f"{guided} moves TA dims up without training", "TA_dims": delta(guided),
                "holds": delta(guided) > 0})
    accuracy = {loss: float(np.mean([r["accuracy"]["overall"]["with_ties"] for r in results["reward_models"][loss]]))
                for loss in LOSSES}
    out.append({"check": "BTT has the best overall accuracy with ties (VideoAlign's ablation)", **accuracy,
                "holds": accuracy["btt"] >= max(accuracy["bt"], accuracy["reg"])})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/miniworld-preference")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rm-steps", type=int, default=1000, help="reward-model training steps")
    parser.add_argument("--steps", type=int, default=200, help="policy training steps (offline DPO, online DPO, RWR)")
    parser.add_argument("--guidance-scale", type=float, default=20.0, help="reward guidance scale w")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="N of the evaluation prompts (a fixed draw spanning the list)")
    parser.add_argument("--write-results", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from miniworld import preferences
    from miniworld.assets import ASSETS, evaluation_prompts
    from miniworld.report import asset_fingerprint, prompt_subset
    from miniworld.world import held_out_captions

    out = Path(args.out)
    pairs = out / "pairs"
    seeds = [int(s) for s in args.seeds.split(",")]
    prompts = prompt_subset(evaluation_prompts(), args.num_prompts)
    t0 = time.time()
    preferences.pairs_csv(pairs, 3000, 0, "train")
    preferences.pairs_csv(pairs, 500, 1, "all")
    results = {"machine": "2-core CPU (shared with other jobs), no GPU", "seeds": seeds, "rm_steps": args.rm_steps,
               "steps": args.steps, "guidance_scale": args.guidance_scale,
               "assets": asset_fingerprint(ASSETS),
               "prompts": {"all": len(prompts), "held_out": len(set(prompts) & set(held_out_captions()))},
               "reward_models": {loss: [] for loss in LOSSES}, "minibench": {}}

    # 1. reward modelling: BTT vs BT vs regression
    for seed in seeds:
        for loss in LOSSES:
            summary = train_reward_model(out / f"rm-{loss}-s{seed}", seed, loss, args.rm_steps, pairs, [])
            results["reward_models"][loss].append(summary)
        train_reward_model(out / f"latent-rm-s{seed}", seed, "btt", args.rm_steps, pairs, ["model.space=latents"])
    print(accuracy_table(results), flush=True)

    # 2. preference optimisation of the shipped student (TA), 3. reward guidance
    variants = {
        "offline DPO, constant beta": ("miniworld_dpo.yaml", []),
        "offline DPO, beta_t": ("miniworld_dpo.yaml", ["objective.beta_schedule=time"]),
        "online DPO (K = 4, 2 prompts per step)": ("miniworld_online_dpo.yaml", ["dataloader.batch_size=2"]),
        "RWR": ("miniworld_rwr.yaml", []),
    }
    rows: dict[str, list[dict]] = {"shipped student": []}
    rows.update({name: [] for name in variants})
    rows[f"shipped student + reward guidance (TA, w = {args.guidance_scale:g})"] = []
    for seed in seeds:
        shipped = cached_minibench(out / "minibench" / f"shipped-s{seed}.json", None, prompts, seed)
        rows["shipped student"].append(shipped)
        checkpoint = out / f"rm-btt-s{seed}" / "model"
        reward = f"rewards=[{{name: preference-model, weight: 1.0, args: {{checkpoint: {checkpoint}, weights: {{TA: 1.0}}}}}}]"
        for name, (config, extra) in variants.items():
            key = name.split(" (")[0].replace(",", "").replace(" ", "-").lower()
            overrides = extra + ([reward] if "DPO" not in name or "online" in name else [])
            folder = train_policy(out / f"{key}-s{seed}", config, seed, args.steps, pairs, overrides)
            rows[name].append(cached_minibench(out / f"{key}-s{seed}" / "minibench.json", folder, prompts, seed))
        guided = latent_guidance(out / f"latent-rm-s{seed}" / "model")
        path = out / "minibench" / f"guided-w{args.guidance_scale:g}-s{seed}.json"
        rows[list(rows)[-1]].append(cached_minibench(path, None, prompts, seed, guided, args.guidance_scale))
        print(json.dumps({name: reports[-1]["held_out"] for name, reports in rows.items()}, indent=1), flush=True)

    results["minibench"] = {name: [{k: r[k] for k in ("overall", "seen", "held_out")} for r in reports]
                            for name, reports in rows.items()}
    results["checks"] = checks(results)
    results["total_seconds"] = time.time() - t0
    (out / "preference.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    tables = (accuracy_table(results), minibench_table(rows, "held_out"), minibench_table(rows, "overall"))
    for table in tables:
        print(table)
    if args.write_results:
        write_results_section(results, *tables)
    return 0


def write_results_section(results: dict, accuracy: str, held_out: str, overall: str) -> None:
    """Replace this bench's section of bench/RESULTS.md (between its markers), or append it."""
    from miniworld.report import write_marked_section

    seeds = ", ".join(str(s) for s in results["seeds"])
    body = "\n".join([
        BEGIN,
        "## Mini world: preference recipes (bench/miniworld_preference.py)",
        "",
        f"Machine: {results['machine']}. Seeds {seeds} (mean ± sample std over seeds). Assets: the shipped mini world "
        f"(miniworld/assets, sha256 prefixes: {', '.join(f'{k} {v}' for k, v in results['assets'].items())}). "
        f"A small run: {results['rm_steps']} reward-model steps, {results['steps']} policy steps, "
        f"{results['prompts']['all']} evaluation prompts with one video each.",
        "",
        f"### Reward modelling: BTT vs BT vs regression ({results['rm_steps']} steps, 3000 training pairs, "
        "500 held-out pairs of all compositions)",
        "",
        "Pairwise accuracy of the mini-world reward model (configs/miniworld_reward_model.yaml), without ties "
        "(tied pairs dropped) and with ties (tie-calibrated); overall = the sum of the three rewards against the "
        "overall label.",
        "",
        accuracy,
        f"### Preference optimisation towards text alignment ({results['steps']} steps from the shipped student), "
        f"and reward guidance (w = {results['guidance_scale']:g})",
        "",
        f"MiniBench of 4-step samples (guidance 4) on the {results['prompts']['held_out']} held-out prompts among "
        f"the {results['prompts']['all']} evaluation prompts drawn (of 90); TA dims = mean of colour, "
        "shape and background (the dimensions the TA preference rewards).",
        "",
        held_out,
        f"All {results['prompts']['all']} evaluation prompts drawn:",
        "",
        overall,
        "Expected shape (the issue's), as measured on the held-out prompts:",
        "",
        *[f"- {'holds' if c['holds'] else '**does not hold**'}: {c['check']} ("
          + ", ".join(f"{k} {v:.3f}" if k in LOSSES else f"{k} {v:+.3f}" for k, v in c.items()
                      if k not in ("check", "holds")) + ")"
          for c in results["checks"]],
        "",
        END,
    ])
    write_marked_section(REPO / "bench" / "RESULTS.md", BEGIN, END, body)


if __name__ == "__main__":
    sys.exit(main())
