"""Does the mini world's video reward's gradient move the object? Prints JSON.

    python bench/miniworld_video_reward_gradient.py [--prompts 16] [--steps 200] [--lr 0.02]

The reward's ranking and its gradient are two different things. For the first ``--prompts`` moving evaluation
captions: the reward's margin between a ground-truth clip's own caption and the time-reversed caption, then
gradient ascent (Adam on the pixels, clamped to [-1, 1]) of the reward of each caption starting from its clip
played backwards, i.e. the object moving the wrong way. MiniBench reads the result every 50 steps: a gradient
that follows the caption would turn the motion around; one that raises the score otherwise leaves it wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", default=None, help="a miniworld-video checkpoint folder (default: the shipped v2 one)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()

    import numpy as np
    import torch

    from miniworld import minibench, world
    from miniworld.assets import V2, evaluation_prompts
    from rewards import build_reward
    from t2v_turbo.video_io import to_uint8_videos

    torch.manual_seed(0)
    reward = build_reward("miniworld-video", checkpoint=str(args.reward or V2 / "video_reward"))
    prompts = [p for p in evaluation_prompts() if world.parse_caption(p).motion != "still"][: args.prompts]
    clips = world.to_pixels(np.stack([world.sample_for_caption(p).video for p in prompts]))
    with torch.no_grad():
        own, reversed_caption = reward.score(clips, prompts), reward.score(clips, [world.time_reversed_caption(p) for p in prompts])
    result = {"prompts": len(prompts), "lr": args.lr,
              "ground_truth": {"score_own_caption": float(own.mean()), "score_reversed_caption": float(reversed_caption.mean()),
                               "margin_mean": float((own - reversed_caption).mean()), "margin_min": float((own - reversed_caption).min())},
              "ascent_from_the_reversed_clip": []}
    pixels = clips.flip(2).clone().requires_grad_(True)  # dim 2 is time: the object moves the wrong way
    optimizer = torch.optim.Adam([pixels], lr=args.lr)
    for step in range(args.steps + 1):
        score = reward.score(pixels.clamp(-1, 1), prompts)
        if step % 50 == 0:
            report = minibench.evaluate(np.stack(to_uint8_videos(pixels.detach().clamp(-1, 1))), prompts)["overall"]
            result["ascent_from_the_reversed_clip"].append(
                {"step": step, "reward": float(score.mean()), **{k: report[k] for k in ("motion", "colour", "shape")}})
        optimizer.zero_grad()
        (-score.sum()).backward()
        optimizer.step()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
