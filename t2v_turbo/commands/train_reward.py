"""``t2v-turbo train-reward CONFIG [key=value ...] [--resume latest|PATH]``: train a reward model on preference pairs.

VideoAlign's recipe (``distill.reward_model``): a multi-dimensional reward model (VideoReward's
Qwen2-VL with one reward token per dimension, or a reward model on noisy latents for reward guidance)
trained with Bradley-Terry with ties, Bradley-Terry or regression on (prompt, video A, video B, label per
dimension) pairs from a CSV; the pairwise accuracy with and without ties per dimension and overall is
written to ``output_dir/eval.json``. Example: ``t2v-turbo train-reward configs/miniworld_reward_model.yaml
loss.name=bt``.
"""

from __future__ import annotations

import argparse
import json
import logging

import yaml

from t2v_turbo.commands import CommandError, add_config_arguments, resolved_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "reward-model run config YAML (e.g. configs/miniworld_reward_model.yaml)",
                         "dotted overrides, e.g. loss.name=bt train.max_steps=100 (+new.key=v adds, ~key deletes)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint in output_dir, or from a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from distill.checkpoints import CheckpointError, find_resume_checkpoint
    from distill.reward_model import RewardModelRecipe, resolve_reward_model_config
    from t2v_turbo.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolved = resolved_run_config(args, resolve=resolve_reward_model_config)
    text = yaml.safe_dump(resolved, sort_keys=False)
    if args.print_config:
        print(text, end="")
        return 0
    if args.resume is not None:
        try:
            find_resume_checkpoint(args.resume, resolved["output_dir"], rank=0)
        except (FileNotFoundError, CheckpointError) as err:
            raise CommandError(f"{args.config}: {err}") from err
    logging.getLogger(__name__).info("resolved config (%s):\n%s", args.config, text)
    recipe = RewardModelRecipe(resolved)
    try:
        recipe.setup(resume=args.resume)
    except ConfigError as err:
        raise CommandError(f"{args.config}: {err}") from err
    summary = recipe.train()
    print(json.dumps(summary["accuracy"], indent=2))
    return 0
