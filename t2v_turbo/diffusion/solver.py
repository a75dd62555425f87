"""The teacher's ODE solver and the quantities it converts between.

Notation (T2V-Turbo / LCM): z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
"""

from __future__ import annotations

import math

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample (B,) tensor broadcasts over (B, ...)."""
    return x.reshape(x.shape + (1,) * (target_ndim - x.ndim))


def extract(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """alpha_bar at integer ``timesteps`` (B,), shaped to broadcast against an ``ndim`` tensor."""
    return append_dims(alphas_cumprod.to(timesteps.device)[timesteps], ndim)


def add_noise(z0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Forward process z_t = sqrt(abar) z0 + sqrt(1 - abar) eps."""
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps


def x0_from_eps(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x0 = (z_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    return (z_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(z_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """eps = (z_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    return (z_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def ddim_solver_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0; Song et al. 2021, eq. 12 with sigma_t = 0).

    z_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps.
    """
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


def cfg_lcm_form(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance as LCM writes it: cond + w (cond - uncond) = (1 + w) cond - w uncond.

    Note the LCM convention: w = 0 is the conditional model, the usual CFG scale is 1 + w.
    """
    return cond + w * (cond - uncond)


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale (LCM / T2V-Turbo), shape (B, embedding_dim).

    With half = embedding_dim // 2 and freq_i = exp(-ln(10000) i / (half - 1)):
    emb = [sin(1000 w freq), cos(1000 w freq)], zero-padded to an odd ``embedding_dim``.
    """
    if w.ndim != 1:
        raise ValueError(f"`w` must be 1-D (one guidance scale per sample), got shape {tuple(w.shape)}")
    w = w.float() * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    args = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
