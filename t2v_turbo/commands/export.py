"""``t2v-turbo export STUDENT_DIR --format lora|merged|diffusers --out DIR [--guidance-scale W]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student_dir", help="student checkpoint folder (student.json + student.safetensors)")
    parser.add_argument(
        "--format", required=True, choices=["lora", "merged", "diffusers"],
        help="lora: LoRA + guidance layer safetensors; merged: diffusers UNet folder with LoRA merged; "
        "diffusers: full TextToVideoSDPipeline folder (LCMScheduler, guidance folded in; run it with guidance_scale=1)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--guidance-scale", type=float, default=None,
        help="guidance scale folded into the model for --format diffusers, and for every format of a Wan student "
        "(default: the student's, usually 7.5)",
    )


def run(args: argparse.Namespace) -> int:
    from t2v_turbo.export import export_student

    try:
        out = export_student(args.student_dir, args.out, args.format, guidance_scale=args.guidance_scale)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    print(f"exported {args.student_dir} as {args.format} to {out}")
    return 0
