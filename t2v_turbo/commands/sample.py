"""``t2v-turbo sample``: videos from a student (multistep consistency) or a teacher (DDIM + CFG).

    t2v-turbo sample --checkpoint runs/tiny/student --prompt "a cat" --out a.mp4
    t2v-turbo sample --checkpoint STUDENT --prompts-file prompts.txt --num-samples 5 --out videos/
    t2v-turbo sample --teacher path/or/hub-id --prompt "a cat" --steps 50 --guidance 7.5 --out teacher.gif
    t2v-turbo sample --checkpoint STUDENT --prompt "a cat" --reward-guidance LATENT_RM --reward-weights TA=1 --out b.mp4

``--out`` ending in ``.mp4``/``.gif`` writes one file (one prompt, one sample); any other path is
a folder receiving ``{prompt}-{i}.mp4`` (``i`` = 0, 1, ... per prompt), the names MiniBench and
VBench read. A student samples with the defaults of its ``student.json`` (steps, guidance scale,
frames, size, fps, lossless video) unless a flag says otherwise, and warns when ``--guidance``
lies outside the range it was trained on. ``--guidance`` is the student's guidance-embedding
scale w; for the teacher it is the standard CFG scale s. Existing outputs are kept unless
``--overwrite`` is given, and ``--out`` is checked to be writable before any model loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2v_turbo.commands import CommandError, check_writable, finite_float, positive_int, refuse_existing

BATCH_DEFAULT = 4
TEACHER_STEPS = 50
TEACHER_GUIDANCE = 7.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="STUDENT_DIR", help="trained model folder (student.json + student.safetensors): "
                        "a student (consistency sampler) or a fine-tuned full-step model (DDIM + CFG)")
    source.add_argument("--teacher", metavar="PATH", help="teacher model folder or hub id (diffusers layout: ModelScope with DDIM + CFG, "
                        "Wan with its own flow scheduler + CFG)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts-file", metavar="FILE", help="text file with one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, help="a .mp4/.gif file (one prompt, one sample) or a folder of {prompt}-{i}.mp4")
    parser.add_argument("--num-samples", type=positive_int, default=1, help="videos per prompt, named {prompt}-0 .. -{N-1}")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"sampling steps (default: the student's, usually 4; {TEACHER_STEPS} for a teacher)")
    parser.add_argument("--guidance", type=finite_float, default=None,
                        help=f"guidance scale: the student's embedding w (default: the student's) or the teacher's CFG scale "
                        f"(default {TEACHER_GUIDANCE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one generator that draws every initial noise")
    parser.add_argument("--format", choices=["mp4", "gif"], default="mp4", help="file type when --out is a folder")
    parser.add_argument("--num-frames", type=positive_int, default=None, help="frames per video (default: the student's training clips, else the teacher's)")
    parser.add_argument("--height", type=positive_int, default=None, help="height in pixels (default: the student's, else the teacher's)")
    parser.add_argument("--width", type=positive_int, default=None, help="width in pixels (default: the student's, else the teacher's)")
    parser.add_argument("--fps", type=positive_int, default=None,
                        help="fps conditioning (families that use it) and of the written files (default: the student's, else the teacher's)")
    parser.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                        help="mp4 in lossless RGB (libx264rgb, crf 0) instead of yuv420p (default: the student's setting, on for the mini world)")
    parser.add_argument("--spacing", choices=["t2v_turbo", "lcm"], default="t2v_turbo",
                        help="student timestep spacing: T2V-Turbo's [999, 759, 519, 279] or diffusers' LCM rule [999, 759, 499, 259]")
    parser.add_argument("--unmerged-lora", action="store_true",
                        help="run a LoRA student with peft's unmerged layers (the trained form; slower) instead of merged weights")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_DEFAULT, help="videos sampled together")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="weights and sampling dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (each written atomically)")
    parser.add_argument("--reward-guidance", metavar="MODEL_DIR", default=None,
                        help="reward guidance: a reward model on noisy latents (t2v-turbo train-reward ... "
                        "model.space=latents) steers every step, output - w grad_z sum_k lambda_k r_k(z_t, t)")
    parser.add_argument("--reward-weights", default=None, metavar="DIM=L,...",
                        help="the lambda_k of --reward-guidance per dimension, e.g. TA=1,VQ=0.5 (default: 1 each)")
    parser.add_argument("--reward-scale", type=finite_float, default=1.0, help="w of --reward-guidance")


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise CommandError("--prompt is empty")
        return [args.prompt]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise CommandError(f"--prompts-file: no file at {path.resolve()}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CommandError(f"--prompts-file: {path} holds no prompts")
    return prompts


def output_paths(out: str, prompts: list[str], num_samples: int, file_format: str) -> tuple[list[str], list[Path]]:
    """(prompt of each video, its path): one file, or ``{prompt}-{i}.{format}`` in a folder with
    ``i`` counting each prompt's videos (a prompt listed twice continues its count)."""
    from eval.vbench.naming import video_filename

    out_path = Path(out)
    jobs = [p for p in prompts for _ in range(num_samples)]
    if out_path.suffix.lower() in (".mp4", ".gif"):
        if len(jobs) != 1:
            raise CommandError(f"--out {out} is a single file but there are {len(prompts)} prompt(s) x "
                               f"{num_samples} sample(s); pass a folder")
        return jobs, [out_path]
    counts: dict[str, int] = {}
    paths = []
    for prompt in jobs:
        index = counts[prompt] = counts.get(prompt, -1) + 1
        try:
            paths.append(out_path / video_filename(prompt, index, f".{file_format}"))
        except ValueError as err:
            raise CommandError(f"--out {out}: {err}") from err
    return jobs, paths


def reward_weights(text: str | None) -> dict[str, float] | None:
    """``DIM=L,...`` -> {dim: lambda}; None stays None (every dimension weighs 1)."""
    if text is None:
        return None
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise CommandError(f"--reward-weights: {item!r} is not DIM=NUMBER (e.g. TA=1,VQ=0.5)")
    return weights


def reward_guidance(args: argparse.Namespace, adapter):
    """``prompts -> r(z_t, t)`` of --reward-guidance (the reward model loaded once), or None."""
    if args.reward_guidance is None:
        return None
    from rewards.preference_model import load_preference_model
    from t2v_turbo.pipeline import sampler_noise_level

    model, _ = load_preference_model(args.reward_guidance, teacher=adapter)
    model.to(adapter.device)
    weights = reward_weights(args.reward_weights) or {d: 1.0 for d in model.dimensions}
    model.guidance([], weights, lambda t: t)  # the weights' dimensions are checked once, here
    return lambda prompts: model.guidance(prompts, weights, lambda t: sampler_noise_level(adapter, t))


def run(args: argparse.Namespace) -> int:
    prompts, paths = output_paths(args.out, read_prompts(args), args.num_samples, args.format)
    refuse_existing(paths, args.overwrite)
    check_writable(paths[0].parent)
    reward_weights(args.reward_weights)  # a malformed value is named before any model loads
    if args.reward_guidance is not None and not (Path(args.reward_guidance) / "preference_model.json").is_file():
        raise CommandError(f"--reward-guidance: no reward model at {Path(args.reward_guidance).resolve()} "
                           "(preference_model.json not found)")

    import warnings

    import torch

    from t2v_turbo.pipeline import GuidanceRangeWarning, TeacherPipeline, load_student_pipeline
    from t2v_turbo.video_io import write_mp4, write_video

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        pipe = load_student_pipeline(args.checkpoint, device=device, dtype=dtype, spacing=args.spacing,
                                     fuse_lora=not args.unmerged_lora)
        meta = pipe.meta
        steps, guidance = args.steps or meta.num_inference_steps, args.guidance if args.guidance is not None else meta.guidance_scale
        warning = meta.guidance_warning(guidance)
        if warning:
            print(f"warning: --guidance: {warning}", file=sys.stderr)
        fps = args.fps or meta.fps or pipe.adapter.default_fps
        lossless = meta.lossless_video if args.lossless is None else args.lossless
    else:
        from t2v_turbo.adapters import teacher_adapter_class

        adapter_cls = teacher_adapter_class(args.teacher)
        given = {k: getattr(args, k) for k in ("num_frames", "height", "width", "fps") if getattr(args, k)}
        extra = given if adapter_cls.family == "wan" else {}  # the Wan adapter validates them (1 + 4k frames)
        adapter = adapter_cls.from_pretrained(args.teacher, torch_dtype=dtype, device=device, **extra)
        pipe = TeacherPipeline(adapter)
        steps = args.steps or TEACHER_STEPS
        guidance = TEACHER_GUIDANCE if args.guidance is None else args.guidance
        fps = args.fps or adapter.default_fps
        lossless = bool(args.lossless)
    guided = reward_guidance(args, pipe.adapter)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    geometry = dict(num_frames=args.num_frames, height=args.height, width=args.width, fps=args.fps)
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        with warnings.catch_warnings():  # printed once above
            warnings.simplefilter("ignore", GuidanceRangeWarning)
            videos = pipe(batch, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **geometry,
                          reward_guidance=guided(batch) if guided else None,
                          reward_guidance_scale=args.reward_scale)
        for video, path in zip(videos, paths[start:start + args.batch_size]):
            if path.suffix.lower() == ".mp4":
                write_mp4(path, video, fps=fps, lossless=lossless)
            else:
                write_video(path, video, fps=fps)
            print(path)
    return 0
