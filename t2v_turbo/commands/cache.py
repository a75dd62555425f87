"""``t2v-turbo cache CONFIG [key=value ...] --out DIR``: encode a run config's dataset once (VAE posteriors of its
clips and text embeddings of its captions), so that training reads them instead of decoding and encoding videos.

    t2v-turbo cache configs/t2v_turbo_vc2.yaml data.csv=/data/webvid/train.csv --out /data/cache/vc2-webvid
    accelerate launch --num_processes 8 -m t2v_turbo.cli cache configs/t2v_turbo_vc2.yaml --out /data/cache/vc2
    t2v-turbo train configs/t2v_turbo_vc2.yaml data.csv=/data/webvid/train.csv --latent-cache /data/cache/vc2-webvid

The clips are the ones the config's ``data`` samples (frames, fps, size, crop, clip starts of ``--epochs``
epochs); the teacher and ``train.teacher_dtype`` are the config's. Shards are written one at a time, each
atomically: run the same command again to continue an interrupted cache; a folder holding a cache of another
teacher, data or geometry is refused, naming what differs. Videos that cannot be decoded are skipped, named and
counted (``manifest.json``). Under ``accelerate launch`` each process encodes its share of the shards.
docs/training.md ("Cached latents") describes the format.
"""

from __future__ import annotations

import argparse
import logging

from t2v_turbo.commands import CommandError, add_config_arguments, positive_int, resolved_run_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "run config YAML whose teacher and data are cached (see configs/)",
                         "dotted overrides, as for `train` (e.g. data.csv=/data/train.csv)")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder (created; continued when it holds "
                        "an unfinished cache of the same configuration)")
    parser.add_argument("--shard-size", type=positive_int, default=64,
                        help="items per shard file (each shard is held in memory while it is written)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="clips per VAE / text-encoder call")
    parser.add_argument("--epochs", type=positive_int, default=1,
                        help="clip draws cached per video (training epoch e reads draw e mod EPOCHS; with "
                             "data.random_start each epoch's clip start differs)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="storage dtype of the posteriors and embeddings (float32 reproduces the video path's "
                             "loss; bfloat16 halves the size and rounds them)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from distill.latent_cache import CacheMismatchError, write_cache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = resolved_run_config(args)
    try:
        manifest = write_cache(cfg, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                               epochs=args.epochs, dtype=args.dtype, device=args.device)
    except CacheMismatchError as err:
        raise CommandError(str(err)) from err
    if "cached_items" in manifest:
        skipped = manifest["skipped"]
        print(f"cached {manifest['cached_items']} item(s) x {manifest['epochs']} epoch(s) in {args.out}; "
              f"{len(skipped)} video(s) skipped" + (f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    return 0
