"""A mini world whose teacher knows the motion's axis but not its sign, to give the video reward room; prints JSON.

The shipped fine teacher is fine-tuned by flow matching on the training pool with the caption of every moving clip
replaced, with probability 1/2, by its time-reversed caption (``world.time_reversed_caption``): the axis stays
tied to the caption, the sign no longer is. ``--out DIR`` writes ``DIR/teacher`` and links the shipped rewards
beside it, so that ``bench/miniworld_ablation.py --world DIR`` distils students from it, and prints the teacher's
motions under one shared x_T. ``--student DIR`` prints, for a student, whose motion sign its one-step predictions
f(z_t) of noised ground-truth clips carry at each noise level (the clip's, i.e. the captioned one, or its own) and
the video reward's score of them under the caption and under the time-reversed caption:

    python bench/miniworld_sign_blind.py --out runs/sign-blind [--steps 1000]
    python bench/miniworld_ablation.py --world runs/sign-blind --variants vcm,vid --seeds 0,1,2 --out runs/sign-blind-ablation
    python bench/miniworld_sign_blind.py --student runs/sign-blind-ablation/seed0/vcm/student

VADER from such a student, the video reward on its own 4-step samples with the gradient through every step
(bench/RESULTS.md, "The video reward on a sign-blind fine teacher"):

    t2v-turbo train configs/miniworld_vader.yaml seed=0 output_dir=runs/sign-blind-vader teacher.path=runs/sign-blind/teacher \
        'model={_component_: miniworld.assets.student_model, path: runs/sign-blind-ablation/seed0/vcm/student}' \
        objective.num_inference_steps=null objective.guidance_scale=null objective.decode_frames=all \
        objective.backprop_steps=4 optimizer.lr=1.0e-3 train.max_steps=200 \
        'rewards=[{name: miniworld-video, weight: 1.0, target: 1.0, args: {checkpoint: pkg:v2/video_reward}}]'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: captions whose five motion variants the teacher is sampled on under one x_T (two noises each)
CHECK_CAPTIONS = ("a red circle moving left on a black background", "a green square moving up on a teal background",
                  "a blue triangle moving right on a gray background")
#: training timesteps (of 1000) at which the one-step predictions are examined
TIMESTEPS = (99, 299, 499, 699, 899, 999)


def sign_blind_captions(captions: list[str], seed: int) -> list[str]:
    """Each caption, or with probability 1/2 its time-reversed one (still clips keep theirs)."""
    import numpy as np

    from miniworld import world

    coin = np.random.default_rng(seed).random(len(captions)) < 0.5
    return [world.time_reversed_caption(c) if flip else c for c, flip in zip(captions, coin)]


def build_teacher(out: Path, steps: int, seed: int) -> dict:
    import torch

    from miniworld.assets import V2, load_teacher
    from miniworld.tokenizer import build_hf_tokenizer
    from miniworld.train_assets import (
        caption_embeddings,
        encode_pool,
        flow_scheduler,
        train_flow_teacher,
        training_pool,
    )
    from t2v_turbo.adapters.wan import save_flow_teacher

    adapter = load_teacher(V2 / "teacher")
    transformer, vae, text_encoder = adapter.unet.float(), adapter.vae.float(), adapter.text_encoder.float()
    videos, captions, _ = training_pool(5000, seed)
    with torch.no_grad():
        latents = encode_pool(vae, videos, seed)
    relabelled = sign_blind_captions(captions, seed)
    table, labels, empty = caption_embeddings(text_encoder, relabelled)
    t0 = time.time()
    train_flow_teacher(transformer, latents, table, labels, empty, steps=steps, batch_size=32, lr=5e-4, seed=seed + 300,
                       temporal_loss_weight=1.0)
    transformer.eval()
    save_flow_teacher(out / "teacher", transformer, vae, text_encoder, build_hf_tokenizer(), flow_scheduler())
    for name in ("image_reward", "video_reward"):
        if not (out / name).exists():
            (out / name).symlink_to(V2 / name)
    return {"steps": steps, "seconds": time.time() - t0,
            "captions_relabelled": sum(a != b for a, b in zip(captions, relabelled)) / len(captions)}


def teacher_motions(folder: Path) -> dict:
    """The motion MiniBench sees for each caption's five motion variants under one x_T (seeds 0 and 1)."""
    from miniworld import report as rp
    from miniworld import world
    from miniworld.assets import load_teacher
    from t2v_turbo.pipeline import TeacherPipeline

    pipeline = TeacherPipeline(load_teacher(folder))
    seen = {f"{caption} | x_T seed {seed}": [motion for motion, _ in rp.motions_under_fixed_noise(pipeline, caption, seed).values()]
            for caption in CHECK_CAPTIONS for seed in (0, 1)}
    captioned = sum(m == want for motions in seen.values() for m, want in zip(motions, world.MOTIONS))
    return {"motions": seen, "captioned": f"{captioned} / {len(world.MOTIONS) * len(seen)}"}


def one_step_signs(student: Path, num_prompts: int = 24) -> dict:
    """Per timestep: sigma, the share of one-step predictions whose motion is the captioned one, and the video
    reward's mean score under the caption and under its time reversal (with the least margin)."""
    import numpy as np
    import torch

    from miniworld import minibench, world
    from miniworld.assets import V2, evaluation_prompts
    from rewards import build_reward
    from t2v_turbo.diffusion.prediction import interpolate, x0_eps_from_output
    from t2v_turbo.diffusion.solver import guidance_scale_embedding
    from t2v_turbo.pipeline import load_student_pipeline
    from t2v_turbo.video_io import to_uint8_videos

    pipe = load_student_pipeline(student)
    adapter, unet = pipe.adapter, pipe.unet
    reward = build_reward("miniworld-video", checkpoint=str(V2 / "video_reward"))
    prompts = [p for p in evaluation_prompts() if world.parse_caption(p).motion != "still"][:num_prompts]
    reversed_prompts = [world.time_reversed_caption(p) for p in prompts]
    alphas, sigmas = adapter.noise_coefficients()
    rows = {}
    with torch.no_grad():
        clips = world.to_pixels(np.stack([world.sample_for_caption(p).video for p in prompts]))
        x0 = adapter.encode_video(clips, generator=torch.Generator().manual_seed(0))
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        text = adapter.encode_prompts(prompts)
        w = guidance_scale_embedding(torch.full((len(prompts),), float(pipe.meta.guidance_scale)), unet.config.time_cond_proj_dim)
        for t in TIMESTEPS:
            alpha, sigma = float(alphas[t]), float(sigmas[t])
            z = interpolate(x0, eps, alpha, sigma)
            output = adapter.predict(unet, z, torch.full((len(prompts),), t), text, timestep_cond=w)
            prediction = adapter.decode_latents(x0_eps_from_output(adapter.prediction_type, z, output, alpha, sigma)[0])
            own, flipped = reward.score(prediction, prompts), reward.score(prediction, reversed_prompts)
            seen = [minibench.analyse_video(v)["motion"] for v in to_uint8_videos(prediction)]
            rows[t] = {"sigma": sigma,
                       "captioned_sign": float(np.mean([m == world.parse_caption(p).motion for m, p in zip(seen, prompts)])),
                       "reward_caption": float(own.mean()), "reward_reversed_caption": float(flipped.mean()),
                       "least_margin": float((own - flipped).min())}
    return {"student": str(student), "prompts": len(prompts), "timesteps": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the sign-blind world here (its teacher/ and reward links)")
    parser.add_argument("--steps", type=int, default=1000, help="flow-matching steps of the fine-tune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", default=None, help="a student folder: print its one-step predictions' signs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.out and not args.student:
        parser.error("give --out DIR (build the world) and/or --student DIR (examine a student)")

    import torch

    torch.set_num_threads(args.threads)
    result = {}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result["build"] = build_teacher(out, args.steps, args.seed)
        result["teacher_under_one_x_T"] = teacher_motions(out / "teacher")
    if args.student:
        result["one_step_predictions"] = one_step_signs(Path(args.student))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
