"""``t2v-turbo sample``: videos from a student (multistep consistency) or a teacher (DDIM + CFG).

    t2v-turbo sample --checkpoint runs/tiny/checkpoint-500 --prompt "a cat" --steps 4 --guidance 7.5 --seed 0 --out a.mp4
    t2v-turbo sample --checkpoint STUDENT --prompts-file prompts.txt --out videos/          # one file per prompt
    t2v-turbo sample --teacher path/or/hub-id --prompt "a cat" --steps 50 --guidance 7.5 --out teacher.gif

``--out`` ending in ``.mp4``/``.gif`` writes one file (one prompt); any other path is a folder
receiving ``000_<prompt>.mp4`` (``--format gif`` for gifs). ``--guidance`` is the student's
guidance-embedding scale w; for the teacher it is the standard CFG scale s.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

BATCH_DEFAULT = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="student checkpoint folder (student.json + student.safetensors)")
    source.add_argument("--teacher", help="teacher model folder or hub id (diffusers layout: ModelScope with DDIM + CFG, "
                        "Wan with its own flow scheduler + CFG)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts-file", help="text file with one prompt per line (blank lines skipped)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: 4 for a student, 50 for a teacher)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (student: embedding w; teacher: CFG scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="a .mp4/.gif file (one prompt) or a folder")
    parser.add_argument("--format", choices=["mp4", "gif"], default="mp4", help="file type when --out is a folder")
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--fps", type=int, default=None, help="fps conditioning (families that use it) and of the written files")
    parser.add_argument("--spacing", choices=["t2v_turbo", "lcm"], default="t2v_turbo", help="student timestep spacing")
    parser.add_argument("--batch-size", type=int, default=BATCH_DEFAULT, help="prompts sampled together")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise SystemExit(f"--prompts-file: no file at {path.resolve()}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"--prompts-file: {path} holds no prompts")
    return prompts


def output_paths(out: str, prompts: list[str], file_format: str) -> list[Path]:
    out_path = Path(out)
    if out_path.suffix.lower() in (".mp4", ".gif"):
        if len(prompts) != 1:
            raise SystemExit(f"--out {out} is a single file but there are {len(prompts)} prompts; pass a folder")
        return [out_path]
    slug = lambda text: re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "prompt"
    return [out_path / f"{i:03d}_{slug(p)}.{file_format}" for i, p in enumerate(prompts)]


def run(args: argparse.Namespace) -> int:
    import torch

    from t2v_turbo.pipeline import TeacherPipeline, load_student_pipeline
    from t2v_turbo.video_io import write_video

    prompts = read_prompts(args)
    paths = output_paths(args.out, prompts, args.format)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        pipe = load_student_pipeline(args.checkpoint, device=device, dtype=dtype, spacing=args.spacing)
        steps = args.steps or 4
    else:
        from t2v_turbo.adapters import teacher_adapter_class

        adapter_cls = teacher_adapter_class(args.teacher)
        given = {k: getattr(args, k) for k in ("num_frames", "height", "width", "fps") if getattr(args, k)}
        extra = given if adapter_cls.family == "wan" else {}  # the Wan adapter validates them (1 + 4k frames)
        adapter = adapter_cls.from_pretrained(args.teacher, torch_dtype=dtype, device=device, **extra)
        pipe = TeacherPipeline(adapter)
        steps = args.steps or 50
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    fps = args.fps or pipe.adapter.default_fps
    geometry = dict(num_frames=args.num_frames, height=args.height, width=args.width, fps=args.fps)
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        videos = pipe(batch, num_inference_steps=steps, guidance_scale=args.guidance, generator=generator, **geometry)
        for video, path in zip(videos, paths[start:start + args.batch_size]):
            write_video(path, video, fps=fps)
            print(path)
    return 0
