"""The interface every teacher family implements.

The trainer, samplers, reward terms and eval only talk to a teacher through this class, so a
new family (ModelScope in diffusers layout, VideoCrafter2, the mini world) plugs in without
touching them. Conventions:

- pixel videos are (B, C, T, H, W) float in [-1, 1];
- latents are (B, c, T, h, w) and already multiplied by ``vae_scale_factor``;
- timesteps are integer (B,) tensors on the 1000-step training grid;
- every UNet call goes through ``predict_eps`` so family-specific inputs (fps, layout) stay here.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import nn


def move_module(module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """``module.to(device, dtype)`` passing only what is set. A diffusers model that keeps no
    module in float32 is cast by ``nn.Module.to`` itself: diffusers' ``to`` warns on any ``dtype``
    argument, even ``None`` with nothing to keep ("should be kept in float32: []")."""
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    if not kwargs:
        return module
    if dtype is not None and not getattr(module, "_keep_in_fp32_modules", None):
        return nn.Module.to(module, **kwargs)
    return module.to(**kwargs)


class TeacherAdapter(abc.ABC):
    """A frozen text-to-video latent diffusion teacher and what distillation needs from it."""

    #: short family name written into checkpoints and manifests ("diffusers", "vc2", ...)
    family: str = "abstract"

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    #: alpha_bar_t on the training grid, float32 (num_train_timesteps,)
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int = 1000
    vae_scale_factor: float = 0.18215
    #: default video geometry of the family: frames, height, width (pixels), fps
    default_num_frames: int = 16
    default_height: int = 256
    default_width: int = 256
    default_fps: int = 8
    #: write this family's sampled mp4s losslessly (RGB): small saturated worlds lose colour to yuv420p
    lossless_video: bool = False

    # ---- text -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning (B, L, D) for the UNet's cross-attention."""

    def empty_prompt_embedding(self, batch_size: int) -> torch.Tensor:
        """The unconditional context: the encoding of the empty prompt, repeated."""
        return self.encode_prompts([""]).expand(batch_size, -1, -1)

    # ---- VAE --------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, T, H, W) pixels in [-1, 1] -> scaled latents (B, c, T, h, w) (a posterior sample)."""

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, frame_chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents (B, c, T, h, w) -> pixels (B, C, T, H, W) in [-1, 1] (unclamped).

        Differentiable with respect to ``latents``; frames are decoded ``frame_chunk_size``
        at a time to bound memory. To decode only some frames, index the latents first.
        """

    # ---- UNet -------------------------------------------------------------------------
    @abc.abstractmethod
    def predict_eps(
        self,
        unet: nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embedding: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        fps: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Epsilon prediction of ``unet`` (the teacher's or a student built from it)."""

    @abc.abstractmethod
    def build_student_unet(self, time_cond_proj_dim: int = 256) -> nn.Module:
        """A trainable copy of the teacher UNet with the guidance-embedding layer ``time_cond_proj``.

        The teacher's weights load strictly; ``time_cond_proj`` is the only key expected to be
        missing and is initialised deterministically (zeros: the student starts as the teacher).
        """

    # ---- devices ----------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TeacherAdapter":
        """Move the frozen teacher modules (and the schedule) to ``device``/``dtype``."""
        for module in self.modules().values():
            move_module(module, device=device, dtype=dtype)
        if device is not None:
            self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def freeze(self) -> "TeacherAdapter":
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()
        return self
