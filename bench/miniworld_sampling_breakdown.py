"""Where the mini world's sampling time goes, and what a compact VAE decoder would change; prints JSON.

    python bench/miniworld_sampling_breakdown.py [--student DIR] [--decoder-levels 16,16] [--decoder-steps 3000]

One process, one torch thread, batch 8, best of ``--repeats``. Per-step costs come from the difference of two
step counts (student 8 - 4 steps, teacher 50 - 25 steps), so what a sampler does once (text encoding, the VAE
decode) cancels. The compact decoder is trained from scratch on the shipped v2 encoder's posterior samples
(``train_assets.finetune_vae_decoder`` on a VAE whose decoder is swapped for one with ``--decoder-levels``;
the encoder, and so the teacher's latent space, is unchanged) plus ``--off-palette`` clips; it is then scored
as the round-trip ceiling and as the teacher's decoder on the 90 evaluation prompts, and timed end to end on
both samplers (``--decoder-steps 0``: timing of the shipped decoder only).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compact_decoder_vae(vae, levels: tuple[int, ...]):
    """A deep copy of ``vae`` whose ``post_quant_conv`` + decoder are fresh ones with block channels ``levels``
    (same latent channels, norm groups and blocks per level)."""
    import torch
    from diffusers import AutoencoderKL

    cfg = vae.config
    with torch.random.fork_rng():  # the fresh decoder's initial weights: one draw, whatever ran before
        torch.manual_seed(0)
        fresh = AutoencoderKL(latent_channels=cfg.latent_channels, block_out_channels=levels,
                              down_block_types=["DownEncoderBlock2D"] * len(levels),
                              up_block_types=["UpDecoderBlock2D"] * len(levels), layers_per_block=cfg.layers_per_block,
                              norm_num_groups=cfg.norm_num_groups, sample_size=cfg.sample_size, mid_block_add_attention=False)
    out = copy.deepcopy(vae)
    out.decoder, out.post_quant_conv = fresh.decoder, fresh.post_quant_conv
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default=None, help="a trained student folder (default: the shipped v2 student)")
    parser.add_argument("--decoder-levels", default=None,
                        help="block channels of the compact decoder, one per level of the shipped VAE "
                             "(default: the shipped levels with every level after the first halved)")
    parser.add_argument("--decoder-steps", type=int, default=3000)
    parser.add_argument("--decoder-lr", type=float, default=1e-3)
    parser.add_argument("--off-palette", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from miniworld import minibench, world
    from miniworld import report as rp
    from miniworld.assets import V2, evaluation_prompts, load_teacher
    from miniworld.train_assets import finetune_vae_decoder, off_palette_clips, training_pool
    from t2v_turbo.pipeline import load_student_pipeline

    # the compact decoder's levels, checked before any model loads: one per level of the shipped VAE, whose latent
    # grid fixes the number of upsamplings
    shipped_levels = json.loads((V2 / "teacher" / "vae" / "config.json").read_text())["block_out_channels"]
    levels = (tuple(int(c) for c in args.decoder_levels.split(",")) if args.decoder_levels
              else (shipped_levels[0], *(c // 2 for c in shipped_levels[1:])))
    if len(levels) != len(shipped_levels):
        parser.error(f"--decoder-levels {args.decoder_levels}: the shipped VAE has {len(shipped_levels)} levels")
    student = load_student_pipeline(args.student or V2 / "student")
    teacher = load_teacher(V2 / "teacher")
    prompts = evaluation_prompts()
    batch = prompts[:8]

    def student_seconds(steps):
        return rp.best_seconds(lambda: rp.sample_videos(student, batch, steps=steps, guidance_scale=4.0, batch_size=8),
                               args.repeats)

    def teacher_seconds(steps):  # 25 times longer than a student run: 3 repeats are enough
        return rp.best_seconds(lambda: rp.sample_teacher(teacher, batch, steps=steps, guidance_scale=4.0, batch_size=8), 3)

    latents = torch.randn(teacher.latent_shape(8, world.NUM_FRAMES, world.HEIGHT, world.WIDTH))
    result: dict = {"machine": "2-core CPU, no GPU", "torch_threads": 1, "batch": 8}
    with torch.inference_mode():
        result.update(student_4=student_seconds(4), student_8=student_seconds(8), teacher_50=teacher_seconds(50),
                      teacher_25=teacher_seconds(25), decode_shipped=rp.best_seconds(lambda: teacher.decode_latents(latents), args.repeats))
    result["student_step"] = (result["student_8"] - result["student_4"]) / 4
    result["teacher_step"] = (result["teacher_50"] - result["teacher_25"]) / 25
    result["speedup_shipped"] = result["teacher_50"] / result["student_4"]
    result["speedup_networks_only"] = 50 * result["teacher_step"] / (4 * result["student_step"])

    if args.decoder_steps:
        videos, _, _ = training_pool(5000, 0)
        if args.off_palette:
            videos = np.concatenate([videos, off_palette_clips(args.off_palette, 0)])
        compact, record = finetune_vae_decoder(compact_decoder_vae(teacher.vae, levels), videos, args.decoder_steps,
                                               lr=args.decoder_lr, seed=0)
        result["compact_decoder"] = {
            "levels": levels, "parameters": sum(p.numel() for p in compact.decoder.parameters()),
            "shipped_parameters": sum(p.numel() for p in teacher.vae.decoder.parameters()),
            **{k: v for k, v in record.items() if k != "loss_curve"}}
        teacher.vae = student.adapter.vae = compact
        with torch.inference_mode():
            result.update(decode_compact=rp.best_seconds(lambda: teacher.decode_latents(latents), args.repeats),
                          student_4_compact=student_seconds(4),
                          teacher_50_compact=teacher_seconds(50))
        result["speedup_compact"] = result["teacher_50_compact"] / result["student_4_compact"]
        for name, videos_ in (("roundtrip_compact", rp.vae_roundtrip(teacher, prompts, seed=0)),
                              ("teacher_compact", rp.sample_teacher(teacher, prompts, seed=0, guidance_scale=4.0))):
            report = rp.compact(minibench.evaluate(videos_, prompts))
            result[name] = {"overall": report["overall"], "held_out_shape": report["held_out"]["shape"]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
