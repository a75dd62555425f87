"""``t2v-turbo miniworld build [--out DIR] [--stages ...] [--steps vae=1200,...]``: train the mini world's models.

Trains, with fixed seeds and on the world's training split only: the coarse VAE (8x8 latents), the
image-text reward and the video-text reward's first phase, the teachers' frozen text encoder (that
phase's text tower as a ``CLIPTextModel``), the video reward's second phase (videos that differ in one
attribute as negatives), the coarse flow teacher (a Wan-layout DiT) over ``train_assets.FLOW_TEACHER_PHASES``
into ``coarse_teacher/``, the fine VAE (16x16 latents, ``train_assets.FINE_VAE``) and the fine teacher,
warm-started from the coarse one, over ``train_assets.FINE_TEACHER_PHASES`` into ``teacher/``;
``--stages ...,eps_teacher`` also trains the UNet3D epsilon teacher (``train_assets.TEACHER_PHASES``) on the
coarse VAE into ``eps_teacher/``. Writes the layout the shipped assets use (``teacher/``, ``image_reward/``,
``video_reward/``, ``training_log.json``). Re-running resumes a teacher after its last finished phase.
Default output: a new folder, never the shipped assets.
"""

from __future__ import annotations

import argparse
import json
import logging

from t2v_turbo.commands import CommandError, positive_int

#: ``miniworld.train_assets.STAGES`` (named here so that building the parser imports no torch)
STAGES = ("vae", "vae_decoder", "rewards", "text_encoder", "video_reward", "teacher", "fine_vae", "fine_teacher",
          "eps_teacher")
DEFAULT_STAGES = STAGES[:8]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/miniworld-assets", help="output folder (default runs/miniworld-assets)")
    parser.add_argument("--steps", default="", help="optimiser steps per model, e.g. vae=1200,vae_decoder=0,image_reward=1500,video_reward=1500,"
                        "video_reward_variants=1000,fine_vae=2400,fine_vae_decoder=1500 "
                        "(default: train_assets.DEFAULT_STEPS; the teachers' phases are train_assets.FLOW_TEACHER_PHASES "
                        "and TEACHER_PHASES)")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated stages to run, in this order: {', '.join(STAGES)} (default: all but eps_teacher)")
    parser.add_argument("--num-videos", type=positive_int, default=5000, help="size of the rendered training pool (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered pool and of every model's training")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine one thread ran about 4x faster than two)")


def _parse_steps(text: str) -> dict:
    from miniworld.train_assets import DEFAULT_STEPS

    steps = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULT_STEPS or not value.isdigit():
            raise CommandError(f"--steps item {item!r}: expected one of {sorted(DEFAULT_STEPS)}=<int>")
        steps[key] = int(value)
    return steps


def run(args: argparse.Namespace) -> int:
    from miniworld.train_assets import build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise CommandError(f"--stages: unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    record = build(args.out, steps=_parse_steps(args.steps), seed=args.seed, num_videos=args.num_videos,
                   stages=stages, threads=args.threads)
    print(json.dumps({k: v for k, v in record.items() if not isinstance(v, dict)}, indent=2))
    return 0
