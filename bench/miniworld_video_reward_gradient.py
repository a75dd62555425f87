"""Does the mini world's video reward's gradient move the object? Prints JSON.

    python bench/miniworld_video_reward_gradient.py [--space pixels|latents] [--prompts 16] [--steps 200] [--lr 0.02]

The reward's ranking and its gradient are two different things. For the first ``--prompts`` moving evaluation
captions: the reward's margin between a ground-truth clip's own caption and the time-reversed caption, then
gradient ascent (Adam) of the reward of each caption starting from its clip played backwards, i.e. the object
moving the wrong way: on the pixels (clamped to [-1, 1]) or, with ``--space latents``, on the shipped v2 VAE's
latents of that clip, decoded by its decoder (the space a student generates in). MiniBench reads the result
every 50 steps: a gradient that follows the caption would turn the motion around; one that raises the score
otherwise leaves it wrong.
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
    parser.add_argument("--space", choices=("pixels", "latents"), default="pixels")
    parser.add_argument("--lr", type=float, default=None, help="Adam's step (default 0.02 on pixels, 0.05 on latents)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from miniworld import minibench, world
    from miniworld.assets import V2, evaluation_prompts, load_teacher
    from rewards import build_reward
    from t2v_turbo.video_io import to_uint8_videos

    torch.manual_seed(0)
    reward = build_reward("miniworld-video", checkpoint=str(args.reward or V2 / "video_reward"))
    prompts = [p for p in evaluation_prompts() if world.parse_caption(p).motion != "still"][: args.prompts]
    clips = world.to_pixels(np.stack([world.sample_for_caption(p).video for p in prompts]))
    with torch.no_grad():
        own, reversed_caption = reward.score(clips, prompts), reward.score(clips, [world.time_reversed_caption(p) for p in prompts])
    lr = args.lr or {"pixels": 0.02, "latents": 0.05}[args.space]
    result = {"prompts": len(prompts), "space": args.space, "lr": lr,
              "ground_truth": {"score_own_caption": float(own.mean()), "score_reversed_caption": float(reversed_caption.mean()),
                               "margin_mean": float((own - reversed_caption).mean()), "margin_min": float((own - reversed_caption).min())},
              "ascent_from_the_reversed_clip": []}
    backwards = clips.flip(2)  # dim 2 is time: the object moves the wrong way
    if args.space == "latents":
        adapter = load_teacher(V2 / "teacher")
        adapter.vae.requires_grad_(False)
        with torch.no_grad():
            start = adapter.encode_video(backwards, generator=torch.Generator().manual_seed(0))
        decode = adapter.decode_latents
    else:
        start, decode = backwards, lambda pixels: pixels.clamp(-1, 1)
    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    for step in range(args.steps + 1):
        video = decode(variable)
        score = reward.score(video, prompts)
        if step % 50 == 0:
            report = minibench.evaluate(np.stack(to_uint8_videos(video.detach())), prompts)["overall"]
            result["ascent_from_the_reversed_clip"].append(
                {"step": step, "reward": float(score.mean()), **{k: report[k] for k in ("motion", "colour", "shape")}})
        optimizer.zero_grad()
        (-score.sum()).backward()
        optimizer.step()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
