"""Does a mini-world reward's gradient change the attribute it ranks? Prints JSON.

    python bench/miniworld_reward_gradient.py [--reward video|image] [--checkpoint DIR] [--space pixels|latents]
                                              [--prompts 16] [--steps 200] [--lr 0.02]

A reward's ranking and its gradient are two different things. For the first ``--prompts`` evaluation captions
(moving ones for the video reward): the reward's margin between a ground-truth clip's own caption and a caption
that differs in one attribute (the time-reversed caption for ``video``, the next shape for ``image``); then
gradient ascent (Adam) of the reward of each caption starting from a clip that is wrong in that attribute (the
clip played backwards, or the clip redrawn from the same random draws with the next shape): on the pixels
(clamped to [-1, 1]) or, with ``--space latents``, on the shipped v2 VAE's latents of that clip, decoded by its
decoder (the space a student generates in). MiniBench reads the result every 50 steps: a gradient that follows
the caption turns that attribute to the captioned one; one that raises the score otherwise leaves it wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: per reward: its registry name, the shipped folder, and the MiniBench dimension its wrong start gets wrong
KINDS = {"video": ("miniworld-video", "video_reward", "motion"), "image": ("miniworld-image", "image_reward", "shape")}


def wrong_start(caption: str, kind: str):
    """uint8 (T, H, W, 3): a clip of ``caption`` that is wrong in the attribute the reward of ``kind`` must fix, and
    the caption that clip does show."""
    from miniworld import world

    if kind == "video":
        return world.sample_for_caption(caption).video[::-1].copy(), world.time_reversed_caption(caption)
    attrs = world.parse_caption(caption)
    other = dataclasses.replace(attrs, shape=world.SHAPES[(world.SHAPES.index(attrs.shape) + 1) % len(world.SHAPES)])
    return world.make_sample(other, world.caption_draws(caption)).video, world.caption_of(other)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", choices=sorted(KINDS), default="video")
    parser.add_argument("--checkpoint", default=None, help="a reward checkpoint folder (default: the shipped v2 one)")
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

    name, folder, dimension = KINDS[args.reward]
    torch.manual_seed(0)
    # the image reward scores every frame, so that its score has no random draw
    extra = {"num_frames": world.NUM_FRAMES} if args.reward == "image" else {}
    reward = build_reward(name, checkpoint=str(args.checkpoint or V2 / folder), **extra)
    prompts = [p for p in evaluation_prompts() if args.reward == "image" or world.parse_caption(p).motion != "still"][: args.prompts]
    clips = world.to_pixels(np.stack([world.sample_for_caption(p).video for p in prompts]))
    starts, shown = zip(*(wrong_start(p, args.reward) for p in prompts))
    start = world.to_pixels(np.stack(starts))
    with torch.no_grad():
        own, other_caption, other_clip = reward.score(clips, prompts), reward.score(clips, list(shown)), reward.score(start, prompts)
    lr = args.lr or {"pixels": 0.02, "latents": 0.05}[args.space]
    result = {"reward": args.reward, "checkpoint": str(args.checkpoint or f"shipped {folder}"), "prompts": len(prompts),
              "space": args.space, "lr": lr, "dimension": dimension,
              # a caption against the wrong one on the ground-truth clip (ranking captions), and the ground-truth clip
              # against the wrong one under the caption (ranking clips: the direction a student climbs)
              "ground_truth": {"score_own": float(own.mean()), "score_wrong_caption": float(other_caption.mean()),
                               "score_wrong_clip": float(other_clip.mean()),
                               "caption_margin_min": float((own - other_caption).min()),
                               "clip_margin_min": float((own - other_clip).min())},
              "ascent_from_the_wrong_clip": []}
    if args.space == "latents":
        adapter = load_teacher(V2 / "teacher")
        adapter.vae.requires_grad_(False)
        with torch.no_grad():
            start = adapter.encode_video(start, generator=torch.Generator().manual_seed(0))
        decode = adapter.decode_latents
    else:
        decode = lambda pixels: pixels.clamp(-1, 1)  # noqa: E731
    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    for step in range(args.steps + 1):
        video = decode(variable)
        score = reward.score(video, prompts)
        if step % 50 == 0:
            report = minibench.evaluate(np.stack(to_uint8_videos(video.detach())), prompts)["overall"]
            result["ascent_from_the_wrong_clip"].append(
                {"step": step, "reward": score.mean().item(), **{k: report[k] for k in ("motion", "colour", "shape", "background")}})
        optimizer.zero_grad()
        (-score.sum()).backward()
        optimizer.step()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
