"""``t2v-turbo eval minibench VIDEO_DIR [--out report.json]``: score mini-world videos with MiniBench."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video_dir", help="folder of videos named '{prompt}-{i}.mp4'")
    parser.add_argument("--out", default=None, help="JSON report path (Markdown written next to it); default VIDEO_DIR/minibench.json")
    parser.add_argument("--ground-truth", action="store_true", help="also print the score of the world's own videos (the ceiling)")


def run(args: argparse.Namespace) -> int:
    from miniworld import minibench

    report = minibench.evaluate_folder(args.video_dir)
    out = Path(args.out) if args.out else Path(args.video_dir) / "minibench.json"
    json_path, md_path = minibench.write_report(report, out)
    print(minibench.to_markdown(report, title=f"MiniBench: {args.video_dir}"))
    if args.ground_truth:
        print(minibench.to_markdown(minibench.ground_truth_report(), title="MiniBench: ground truth"))
    print(f"wrote {json_path} and {md_path}")
    return 0
