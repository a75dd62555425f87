"""``t2v-turbo train CONFIG [key=value ...] [--resume latest|PATH]``: run a training recipe (the config's objective).

Single process: ``t2v-turbo train configs/tiny.yaml train.max_steps=10``.
Several processes: ``accelerate launch --num_processes 8 -m t2v_turbo.cli train configs/t2v_turbo_ms.yaml``
(``--config_file configs/accelerate/fsdp.yaml`` shards the trained model; docs/training.md).
From cached latents: ``t2v-turbo cache CONFIG --out DIR``, then ``t2v-turbo train CONFIG --latent-cache DIR``.
"""

from __future__ import annotations

import argparse
import logging

import yaml

from t2v_turbo.commands import CommandError, add_config_arguments, resolved_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "run config YAML (see configs/)", "dotted overrides, e.g. optimizer.lr=2e-5 "
                         "train.max_steps=100 (+new.key=v adds, ~key deletes)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint in output_dir, or from a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--latent-cache", metavar="DIR", default=None,
                        help="train from the cache `t2v-turbo cache` wrote from this config (its data node becomes "
                             "distill.latent_cache.CachedLatents, checked against the cache's record; the text "
                             "encoder and the VAE encoder are not kept)")


def run(args: argparse.Namespace) -> int:
    from distill.checkpoints import CheckpointError, CheckpointWriteError
    from distill.nonfinite import NonFiniteError
    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import COMPONENT_KEY, ConfigError
    from t2v_turbo.fileio import FolderInUseError

    def from_latent_cache(cfg: dict) -> None:  # the data node becomes the cache, checked against its record
        from distill.latent_cache import check_cache_source

        check_cache_source(args.latent_cache, cfg.get("data"))
        cfg["data"] = {COMPONENT_KEY: "distill.latent_cache.CachedLatents", "path": args.latent_cache}

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolved = resolved_run_config(args, from_latent_cache if args.latent_cache is not None else None)
    text = yaml.safe_dump(resolved, sort_keys=False)
    if args.print_config:
        print(text, end="")
        return 0
    logging.getLogger(__name__).info("resolved config (%s):\n%s", args.config, text)
    recipe = TrainingRecipe(resolved)
    try:  # setup reads a --resume checkpoint first, before the teacher loads and the data renders
        recipe.setup(resume=args.resume)
        recipe.train()
    except (FileNotFoundError, ConfigError, CheckpointError) as err:  # a bad input: config, path, checkpoint
        raise CommandError(f"{args.config}: {err}") from err
    except (FolderInUseError, NonFiniteError, CheckpointWriteError) as err:  # the run could not go on
        raise CommandError(f"{args.config}: {err}", exit_code=1) from err
    finally:
        recipe.cleanup()
    return 0
