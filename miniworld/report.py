"""Sampling, scoring, timing and reporting helpers shared by the quick start and the ablation bench."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from miniworld import minibench, world
from t2v_turbo.video_io import to_uint8_videos, write_mp4


def sample_videos(pipeline, prompts: Sequence[str], seed: int = 0, steps: int = 4, guidance_scale: float = 4.0,
                  batch_size: int = 30, reward_guidance=None, reward_guidance_scale: float = 1.0) -> np.ndarray:
    """uint8 videos (N, T, H, W, 3) of a pipeline (student or teacher) at the world's geometry;
    one fixed generator per run, prompts sampled ``batch_size`` at a time. ``reward_guidance``: prompts ->
    the pipeline's ``reward_guidance`` for them (``PreferenceRewardModel.guidance``), at ``reward_guidance_scale``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = list(prompts[i : i + batch_size])
        guided = {"reward_guidance": reward_guidance(batch), "reward_guidance_scale": reward_guidance_scale} \
            if reward_guidance is not None else {}
        v = pipeline(batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                     num_frames=world.NUM_FRAMES, height=world.HEIGHT, width=world.WIDTH, generator=g, **guided)
        out.extend(to_uint8_videos(v))
    return np.stack(out)


def sample_teacher(adapter, prompts: Sequence[str], seed: int = 0, steps: int = 50, guidance_scale: float = 4.0,
                  batch_size: int = 30) -> np.ndarray:
    """uint8 videos of the teacher: DDIM ``steps`` with classifier-free guidance."""
    from t2v_turbo.pipeline import TeacherPipeline

    return sample_videos(TeacherPipeline(adapter), prompts, seed, steps, guidance_scale, batch_size)


@torch.no_grad()
def vae_roundtrip(adapter, prompts: Sequence[str], seed: int = 0) -> np.ndarray:
    """Ground-truth videos of ``prompts`` encoded and decoded by the teacher's VAE (uint8)."""
    gt = np.stack([world.sample_for_caption(p).video for p in prompts])
    z = adapter.encode_video(world.to_pixels(gt), generator=torch.Generator().manual_seed(seed))
    return np.stack(to_uint8_videos(adapter.decode_latents(z)))


def motions_under_fixed_noise(pipeline, caption: str, seed: int = 0, steps: int = 50, guidance_scale: float = 4.0) -> dict:
    """The five motion variants of ``caption`` sampled from one shared initial noise x_T: caption -> (motion MiniBench
    sees, centroid displacement first -> last frame in px). A teacher that follows motion gives five different
    trajectories, each the captioned one; one that ignores it gives one trajectory five times."""
    import dataclasses

    attrs = world.parse_caption(caption)
    captions = [world.caption_of(dataclasses.replace(attrs, motion=m)) for m in world.MOTIONS]
    shape = pipeline.adapter.latent_shape(1, world.NUM_FRAMES, world.HEIGHT, world.WIDTH)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).expand(len(captions), *shape[1:])
    videos = to_uint8_videos(pipeline(captions, num_inference_steps=steps, guidance_scale=guidance_scale, latents=x_t.contiguous()))
    seen = [minibench.analyse_video(v) for v in videos]
    return {c: (s["motion"], s["displacement"]) for c, s in zip(captions, seen)}


def write_videos(folder: str | Path, videos: np.ndarray, prompts: Sequence[str]) -> Path:
    """``{prompt}-{i}.mp4`` files (lossless), the naming MiniBench and VBench read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for video, prompt in zip(videos, prompts):
        i = counts.get(prompt, 0)
        counts[prompt] = i + 1
        write_mp4(folder / f"{prompt}-{i}.mp4", video, fps=world.FPS, lossless=True)
    return folder


def best_seconds(fn, repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn`` (the least disturbed by other jobs on the machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_sampling(student_pipeline, adapter, prompts: Sequence[str], teacher_steps: int = 50, student_steps: int = 4,
                  guidance_scale: float = 4.0, repeats: int = 1) -> dict:
    """Wall time of 4-step student vs 50-step CFG teacher sampling on the same batch (best of ``repeats``)."""
    student_s = best_seconds(lambda: sample_videos(student_pipeline, prompts, steps=student_steps,
                                                   guidance_scale=guidance_scale, batch_size=len(prompts)), repeats)
    teacher_s = best_seconds(lambda: sample_teacher(adapter, prompts, steps=teacher_steps, guidance_scale=guidance_scale,
                                                    batch_size=len(prompts)), repeats)
    return {"batch": len(prompts), "student_steps": student_steps, "teacher_steps": teacher_steps,
            "student_seconds": student_s, "teacher_seconds": teacher_s, "speedup": teacher_s / student_s,
            "machine": "2-core CPU, no GPU (shared)", "torch_threads": torch.get_num_threads()}


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars logged by the trainer (tensorboard event files under ``log_dir``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def smooth(values: Sequence[float], decay: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average, as TensorBoard draws it:
    m_k = decay m_{k-1} + (1 - decay) v_k, shown as m_k / (1 - decay^k)."""
    out, m = [], 0.0
    for k, v in enumerate(values, start=1):
        m = decay * m + (1 - decay) * float(v)
        out.append(m / (1 - decay**k))
    return np.asarray(out)


def plot_training(scalars: dict, path: str | Path) -> Path:
    """Training curves as a PNG: the CD loss (log axis), the total loss L = L_CD - sum beta R
    (linear axis: it is negative once the reward terms dominate) and each reward; each curve smoothed
    (``smooth``) over its raw values drawn faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss/cd", "CD loss", "log"), ("loss", "total loss (CD - weighted rewards)", "linear")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for ax, (tag, title, scale) in zip(axes, panels):
        if tag in scalars:
            s, v = zip(*scalars[tag])
            line, = ax.plot(s, v, alpha=0.25, linewidth=0.8, label="raw")
            ax.plot(s, smooth(v), color=line.get_color(), label="smoothed (EMA 0.9)")
            ax.legend(fontsize=7)
        ax.set_yscale(scale)
        ax.set_xlabel("step")
        ax.set_title(title)
    for tag in sorted(t for t in scalars if t.startswith("reward/")):
        s, v = zip(*scalars[tag])
        line, = axes[2].plot(s, v, alpha=0.25, linewidth=0.8)
        axes[2].plot(s, smooth(v), color=line.get_color(), label=tag)
    axes[2].set_xlabel("step")
    axes[2].set_title("reward (cosine)")
    if any(t.startswith("reward/") for t in scalars):
        axes[2].legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_minibench_curve(points: Sequence[dict], path: str | Path) -> Path:
    """MiniBench against training steps as a PNG: the total and each dimension, one line each, with the seeds'
    spread as error bars (``points``: dicts with ``step`` and, per dimension and ``total``, the
    ``(mean, std)`` over seeds that ``seed_statistics`` gives for the overall part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [p["step"] for p in points]
    for key in ["total", *minibench.DIMENSIONS]:
        ax.errorbar(steps, [p[key][0] for p in points], yerr=[p[key][1] for p in points], marker="o", capsize=2,
                    linewidth=2.0 if key == "total" else 1.0, label=key)
    ax.set_xlabel("training step")
    ax.set_ylabel("MiniBench (mean ± std over seeds)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: the MiniBench dimensions scored right or wrong per video (the other two are fractions)
ATTRIBUTE_DIMENSIONS = minibench.DIMENSIONS[:4]


def failed_attributes(video: np.ndarray, prompt: str) -> list[str]:
    """The MiniBench attribute dimensions (background, colour, shape, motion) one video gets wrong."""
    scores = minibench.score_video(video, prompt)
    return [d for d in ATTRIBUTE_DIMENSIONS if scores[d] < 1.0]


def save_sample_grid(path_stem: str | Path, rows: dict[str, np.ndarray], prompts: Sequence[str]) -> list[Path]:
    """A gif (one column per prompt, one row per model) and a labelled png sheet: per prompt its caption, then
    one strip of frames per model, labelled with the model and its MiniBench verdict (pass, or the attributes
    it gets wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2v_turbo.video_io import save_grid

    names = list(rows)
    gif = save_grid(Path(f"{path_stem}.gif"), [rows[n][i] for n in names for i in range(len(prompts))],
                    ncols=len(prompts))
    fig, axes = plt.subplots(len(prompts) * len(names), 1, squeeze=False,
                             figsize=(9, 0.75 * len(prompts) * len(names) + 0.3 * len(prompts)))
    for i, prompt in enumerate(prompts):
        for j, name in enumerate(names):
            ax = axes[i * len(names) + j, 0]
            ax.imshow(np.concatenate(list(rows[name][i]), axis=1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            wrong = failed_attributes(rows[name][i], prompt)
            verdict = "pass" if not wrong else "wrong: " + ", ".join(wrong)
            ax.set_ylabel(f"{name}\n{verdict}", rotation=0, ha="right", va="center", fontsize=7,
                          color="black" if not wrong else "firebrick")
            if j == 0:
                ax.set_title(prompt, fontsize=8, loc="left")
    fig.tight_layout()
    png = Path(f"{path_stem}.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [gif, png]


def results_table(reports: dict[str, dict]) -> str:
    return minibench.TABLE_HEADER + "\n" + "\n".join(minibench.table_row(n, r) for n, r in reports.items()) + "\n"


def seed_statistics(reports: Sequence[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single report) over seeds of each dimension and the
    total, for overall, seen and held-out: ``{"overall": {"colour": (mean, std), ...}, "seen": ..., ...}``
    (a part none of the prompts fall in is left empty)."""
    out = {}
    for part in ("overall", "seen", "held_out"):
        out[part] = {}
        for key in [*minibench.DIMENSIONS, "total"]:
            values = [r[part].get(key) for r in reports]
            if any(v is None for v in values):
                continue
            values = np.asarray(values, dtype=float)
            out[part][key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out


def seeds_table(statistics: dict[str, dict]) -> str:
    """A Markdown table, one row per model, of ``seed_statistics``: each dimension and the total as mean ± std,
    then the seen and held-out totals."""
    def cell(part: dict, key: str) -> str:
        return f"{part[key][0]:.3f} ± {part[key][1]:.3f}" if key in part else "-"

    rows = [f"| {name} | " + " | ".join([cell(st["overall"], k) for k in [*minibench.DIMENSIONS, "total"]]
                                        + [cell(st["seen"], "total"), cell(st["held_out"], "total")]) + " |"
            for name, st in statistics.items()]
    return minibench.TABLE_HEADER + "\n" + "\n".join(rows) + "\n"


def run_commands(commands: dict, parallel: int, env: dict | None = None, cwd: str | Path | None = None) -> dict:
    """Run ``commands`` (``{job: (argv, log path)}``, in their order) as subprocesses, ``parallel`` at a time, each
    writing to its log; returns each job's wall seconds. A failing command stops the running ones and raises,
    naming its log (the mini-world benches' trainings, one torch thread each)."""
    import subprocess

    pending, running, seconds = list(commands), {}, {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                argv, log_path = commands[job]
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                log = open(log_path, "w")
                running[job] = (subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT),
                                time.time(), log)
            for job, (proc, started, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[job]
                if proc.returncode:
                    raise RuntimeError(f"{job} failed (exit {proc.returncode}); see {log.name}")
                seconds[job] = time.time() - started
            time.sleep(0.2)
    finally:
        for proc, _, log in running.values():
            proc.terminate()
            log.close()
    return seconds


def compact(report: dict) -> dict:
    """A report without its per-video rows and the folder it was read from (for caching and JSON summaries that
    travel: shipped score caches, bench/RESULTS.md)."""
    return {k: v for k, v in report.items() if k not in ("videos", "folder")}


def save_json(path: str | Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_marked_section(path: str | Path, begin: str, end: str, body: str) -> Path:
    """Replace the text from ``begin`` to ``end`` (the markers included; ``body`` carries its own) in the file at
    ``path``, or append ``body`` when the markers are absent (a new file starts with a title)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)
    return path


def prompt_subset(prompts: Sequence[str], count: int | None, seed: int = 0) -> list[str]:
    """``count`` of ``prompts`` drawn without replacement by ``seed``, kept in their order (all of them when
    ``count`` is None). The world's prompt lists are ordered by colour and shape, so their first entries would
    cover one composition only."""
    prompts = list(prompts)
    if count is None or count >= len(prompts):
        return prompts
    chosen = np.sort(np.random.default_rng(seed).choice(len(prompts), size=count, replace=False))
    return [prompts[i] for i in chosen]


def check_reusable_run(run: str | Path, max_steps: int) -> None:
    """Refuse to reuse a finished run (a bench's cache) that was trained for another number of steps than asked."""
    from t2v_turbo.config import load_yaml

    path = Path(run) / "config.yaml"
    trained = load_yaml(path)["train"]["max_steps"] if path.is_file() else None
    if trained != max_steps:
        raise SystemExit(f"{run} holds a run of train.max_steps={trained}, not the {max_steps} asked for; "
                         "remove it or pass another --out")


def asset_fingerprint(assets: Path) -> dict:
    """Which shipped assets a table was measured on: the first 12 hex digits of each weight file's sha256."""
    return {str(p.relative_to(assets)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(assets.rglob("*.safetensors"))}
