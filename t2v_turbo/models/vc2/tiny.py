"""Tiny VideoCrafter2 models saved in the real formats, for tests, the bench smoke path and CI.

``save_tiny_vc2_ckpt`` writes a ``model.ckpt`` exactly as VC2's (a dict whose ``state_dict``
holds ``model.diffusion_model.*``, ``first_stage_model.*`` in LDM names, ``cond_stage_model.*``
and the 13 schedule buffers), so code under test loads it through the same path as the real one.
Every weight comes from seeded generators; parameters initialised to exactly 0 or 1 (zero-init
output convs, norms) are re-drawn so no branch is an identity that could hide a wiring bug.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod
from t2v_turbo.models.vc2 import checkpoint as ckpt
from t2v_turbo.models.vc2.unet import VC2UNet
from t2v_turbo.testing import redraw_degenerate_parameters

#: the UNet of shared/reference/vc2_unet_tiny.json, as a teacher (no time_cond_proj)
TINY_UNET = dict(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[], num_res_blocks=1,
                 channel_mult=[1, 2, 1], num_head_channels=8, transformer_depth=1, context_dim=32, use_linear=True,
                 temporal_conv=True, temporal_attention=True, temporal_length=4, addition_attention=True, fps_cond=True,
                 time_cond_proj_dim=None, motion_cond_proj_dim=None)
TINY_VAE = dict(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, sample_size=32)
TINY_TEXT = dict(width=32, layers=2, heads=2, embed_dim=32)


def tiny_vc2_config() -> dict:
    """4 frames of 16x16 pixels (latents 8x8), fps 8."""
    return ckpt.vc2_config(unet=TINY_UNET, vae=TINY_VAE, text_encoder=TINY_TEXT, fps=8, num_frames=4, height=16, width=16)


def build_tiny_vc2(seed: int = 0, config: dict | None = None):
    """(config, unet, vae, text_encoder, schedule buffers) with seeded random weights."""
    config = config or tiny_vc2_config()
    torch.manual_seed(seed)  # module constructors draw from the global RNG
    generator = torch.Generator().manual_seed(seed)
    unet = VC2UNet(**config["unet"])
    vae = ckpt.build_vae(config["vae"])
    text = ckpt.VC2TextEncoder(**config["text_encoder"]).init_weights(generator)
    for module in (unet, vae):
        redraw_degenerate_parameters(module, generator)
    schedule = vc2_schedule_buffers()
    return config, unet.eval(), vae.eval(), text.eval(), schedule


def vc2_schedule_buffers() -> dict[str, torch.Tensor]:
    """VC2's 13 schedule buffers (float32), as LatentDiffusion registers them."""
    alphas_cumprod = scaled_linear_alphas_cumprod(1000, 0.00085, 0.012).double()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    buffers = {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(), "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(torch.clamp(posterior_variance, min=1e-20)),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        "scale_arr": torch.cat([torch.linspace(1.0, 0.7, 400, dtype=torch.float64), torch.full((1000,), 0.7, dtype=torch.float64)]),
    }
    return {k: v.float() for k, v in buffers.items()}


def vc2_ckpt_state_dict(config: dict, unet, vae, text, schedule) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a VC2 ``model.ckpt`` for these modules (LDM VAE names)."""
    levels = len(config["vae"]["block_out_channels"])
    state = {}
    state.update({ckpt.UNET_PREFIX + k: v for k, v in unet.state_dict().items()})
    state.update({ckpt.VAE_PREFIX + k: v for k, v in ckpt.diffusers_vae_to_ldm(vae.state_dict(), levels).items()})
    state.update({ckpt.TEXT_PREFIX + k: v for k, v in text.state_dict().items()})
    state.update(schedule)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_tiny_vc2_ckpt(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``model.ckpt`` (Lightning layout) and ``config.json`` (its architecture) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config, unet, vae, text, schedule = build_tiny_vc2(seed)
    torch.save({"state_dict": vc2_ckpt_state_dict(config, unet, vae, text, schedule), "epoch": 0, "global_step": 0},
               folder / "model.ckpt")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder / "model.ckpt", folder / "config.json"
