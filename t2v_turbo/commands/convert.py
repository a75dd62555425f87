"""``t2v-turbo convert``: VideoCrafter2 and the released T2V-Turbo checkpoints -> safetensors folders.

Formats (first argument):

- ``vc2``: ``--ckpt model.ckpt --out DIR``: VC2's Lightning checkpoint -> a converted teacher folder
  (``unet``/``vae``/``text_encoder``/``schedule`` safetensors + ``vc2_config.json``);
- ``t2v-turbo-lora``: ``--teacher DIR|model.ckpt --lora unet_lora.pt --out STUDENT_DIR`` (a diffusers
  ModelScope folder as ``--teacher`` for T2V-Turbo (MS); its list order is the same rule applied to
  diffusers' ``UNet3DConditionModel``, not checked against an official index table);
- ``t2v-turbo-unet``: ``--teacher ... --unet unet_mg.pt|unet_no_mg.pt|merged.pt --out STUDENT_DIR``;
- ``lora-list``: ``--teacher ... --student STUDENT_DIR --out unet_lora.pt``: a LoRA student back to
  the released list format (plus ``unet_lora.time_cond_proj.safetensors``).

Examples::

    t2v-turbo convert vc2 --ckpt checkpoints/vc2/model.ckpt --out models/vc2
    t2v-turbo convert t2v-turbo-lora --teacher models/vc2 --lora unet_lora.pt --out students/t2v-turbo-vc2
"""

from __future__ import annotations

import argparse
import json

from t2v_turbo.commands import CommandError

FORMATS = ("vc2", "t2v-turbo-lora", "t2v-turbo-unet", "lora-list")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="what to convert (see `t2v-turbo convert --help`)")
    parser.add_argument("--out", required=True, help="output folder (or .pt file for lora-list)")
    parser.add_argument("--ckpt", help="vc2: VideoCrafter2 model.ckpt")
    parser.add_argument("--config", help="architecture JSON for a model.ckpt (default: VideoCrafter2's real sizes)")
    parser.add_argument("--teacher", help="converted VC2 folder or model.ckpt (or a diffusers ModelScope folder) the student sits on")
    parser.add_argument("--lora", help="t2v-turbo-lora: unet_lora.pt")
    parser.add_argument("--unet", help="t2v-turbo-unet: unet_mg.pt, unet_no_mg.pt or a merged UNet")
    parser.add_argument("--student", help="lora-list: our LoRA student folder")
    parser.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout recorded for further training (default 0.1)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="vc2: weight dtype")
    parser.add_argument("--allow-pickle", action="store_true", help="allow full unpickling of trusted .ckpt/.pt files")


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise CommandError(f"{args.format} needs {', '.join(missing)}")


def _teacher(args: argparse.Namespace):
    """VC2 (converted folder or model.ckpt) or, for T2V-Turbo (MS), a diffusers-layout folder."""
    from pathlib import Path

    from t2v_turbo.adapters.vc2 import VC2Adapter

    folder = Path(args.teacher)
    if folder.is_dir() and (folder / "unet").is_dir() and (folder / "model_index.json").is_file():
        from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter

        return DiffusersT2VAdapter.from_pretrained(folder)
    return VC2Adapter.from_pretrained(args.teacher, config=args.config, allow_pickle=args.allow_pickle)


def run(args: argparse.Namespace) -> int:
    import torch

    from t2v_turbo.models.vc2 import released

    if args.format == "vc2":
        _need(args, "ckpt")
        from t2v_turbo.adapters.vc2 import VC2Adapter

        dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
        adapter = VC2Adapter.from_pretrained(args.ckpt, config=args.config, torch_dtype=dtype, allow_pickle=args.allow_pickle)
        folder = adapter.save_pretrained(args.out)
        print(json.dumps({"converted": "vc2", "from": args.ckpt, "out": str(folder)}))
    elif args.format == "t2v-turbo-lora":
        _need(args, "teacher", "lora")
        folder = released.convert_lora_list(_teacher(args), args.lora, args.out, dropout=args.dropout)
        print(json.dumps({"converted": "unet_lora.pt", "from": args.lora, "out": str(folder)}))
    elif args.format == "t2v-turbo-unet":
        _need(args, "teacher", "unet")
        folder, variant = released.convert_unet_file(_teacher(args), args.unet, args.out, allow_pickle=args.allow_pickle)
        print(json.dumps({"converted": variant, "from": args.unet, "out": str(folder)}))
    else:
        _need(args, "teacher", "student")
        path, sidecar = released.export_student_to_lora_list(args.student, _teacher(args), args.out)
        print(json.dumps({"exported": "unet_lora.pt", "out": str(path), "time_cond_proj": str(sidecar)}))
    return 0
