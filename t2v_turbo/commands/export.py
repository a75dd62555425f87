"""``t2v-turbo export STUDENT_DIR --format lora|merged|diffusers --out DIR``: a student for stock diffusers / peft.

    t2v-turbo export runs/ms/student --format lora --out export/lora            # peft adapter folder (+ scheduler/)
    t2v-turbo export runs/ms/student --format merged --out export/unet          # UNet3DConditionModel folder
    t2v-turbo export runs/ms/student --format diffusers --guidance-scale 7.5 --out export/pipeline

Every folder gets a model card (README.md) with a stock usage snippet. The export is written beside
``--out`` and moved into place; an existing non-empty ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from t2v_turbo.commands import CommandError, check_writable, finite_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student_dir", help="student checkpoint folder (student.json + student.safetensors)")
    parser.add_argument(
        "--format", required=True, choices=["lora", "merged", "diffusers"],
        help="lora: peft adapter folder on the teacher's UNet (PeftModel.from_pretrained); merged: diffusers UNet folder "
        "with the LoRA merged; diffusers: full TextToVideoSDPipeline folder (LCMScheduler); lora and diffusers fold the "
        "guidance scale into the weights: run them with guidance_scale=1",
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument(
        "--guidance-scale", type=finite_float, default=None,
        help="guidance scale folded into the weights for --format lora/diffusers, and for every format of a Wan student "
        "(default: the student's)",
    )
    parser.add_argument("--metrics", nargs="+", default=None, metavar="JSON",
                        help="result files quoted in the model card, e.g. a MiniBench or VBench report (default: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (swapped in once written)")


def run(args: argparse.Namespace) -> int:
    from t2v_turbo.export import export_student

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"--out {out} already exists and is not empty; pass --overwrite to replace it")
    check_writable(out.parent)  # the export is written beside --out, then moved into place
    try:
        out = export_student(args.student_dir, out, args.format, guidance_scale=args.guidance_scale,
                             overwrite=args.overwrite, metrics=args.metrics or [])
    except ValueError as err:
        raise CommandError(str(err)) from err
    print(f"exported {args.student_dir} as {args.format} to {out}")
    return 0
