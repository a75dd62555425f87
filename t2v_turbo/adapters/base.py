"""The interface every teacher family implements.

The trainer, samplers, reward terms and eval only talk to a teacher through this class, so a
new family (ModelScope in diffusers layout, VideoCrafter2, the mini world) plugs in without
touching them. Conventions:

- pixel videos are (B, C, T, H, W) float in [-1, 1];
- latents are (B, c, T, h, w) and already multiplied by ``vae_scale_factor``;
- timesteps are integer (B,) tensors on the 1000-step training grid (for a flow teacher the
  grid index i stands for sigma_i, see ``t2v_turbo.diffusion.flow``);
- every network call goes through ``predict`` (the raw output, of the adapter's
  ``prediction_type``) or ``predict_eps`` so family-specific inputs (fps, layout, timestep
  conversion) stay here;
- ``noise_coefficients()`` gives (alpha_t, sigma_t) with z_t = alpha_t x0 + sigma_t eps, and
  ``t2v_turbo.diffusion.prediction`` converts an output to (x0, eps) by ``prediction_type``: the
  trainer and samplers pick their conversions from these two, never from the family.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from t2v_turbo.diffusion.prediction import noise_coefficients


def posterior_per_frame(
    vae: nn.Module, pixels: torch.Tensor, scale: float, frame_chunk_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-frame 2D VAE (diffusers ``AutoencoderKL``): (B, 3, T, H, W) pixels in [-1, 1] -> the posterior
    N(mean, std^2) of each frame's latents in the scaled space, ``scale`` x (mean, std), each (B, c, T, h, w),
    float32, ``frame_chunk_size`` frames at a time."""
    batch, _, frames = pixels.shape[:3]
    flat = pixels.transpose(1, 2).flatten(0, 1)
    dtype = next(vae.parameters()).dtype
    moments = [vae.encode(chunk.to(dtype)).latent_dist for chunk in flat.split(frame_chunk_size)]
    mean, std = (torch.cat([getattr(m, name) for m in moments]).float() * scale for name in ("mean", "std"))
    return tuple(x.unflatten(0, (batch, frames)).transpose(1, 2) for x in (mean, std))


def sample_posterior(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """z = mean + std * eps, eps ~ N(0, I) drawn in float32 on the CPU: one draw of the whole (B, c, T, h, w)
    shape from ``generator``, or, given one generator per sample, sample b's (c, T, h, w) draw from
    ``generator[b]`` (so a sample's latents do not depend on the batch it is in)."""
    if generator is None or isinstance(generator, torch.Generator):
        eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    else:
        if len(generator) != mean.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {mean.shape[0]} posteriors")
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g, dtype=torch.float32) for g in generator])
    return mean.float() + std.float() * eps.to(mean.device)


def decode_per_frame(vae: nn.Module, latents: torch.Tensor, scale: float, frame_chunk_size: int = 8) -> torch.Tensor:
    """Inverse of ``encode_per_frame``: latents / ``scale`` decoded frame by frame -> (B, 3, T, H, W),
    unclamped and differentiable, ``frame_chunk_size`` frames at a time."""
    batch, _, frames = latents.shape[:3]
    flat = latents.transpose(1, 2).flatten(0, 1) / scale
    dtype = next(vae.parameters()).dtype
    chunks = [vae.decode(chunk.to(dtype)).sample for chunk in flat.split(frame_chunk_size)]
    return torch.cat(chunks).unflatten(0, (batch, frames)).transpose(1, 2)


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
    #: what the network predicts: "epsilon" (eps) or "flow" (velocity v = eps - x0)
    prediction_type: str = "epsilon"
    #: alpha_bar_t on the training grid, float32 (num_train_timesteps,) ("epsilon" families)
    alphas_cumprod: torch.Tensor | None = None
    #: sigma_i on the training grid, float32 (num_train_timesteps,) ("flow" families)
    flow_sigmas: torch.Tensor | None = None
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
    def encode_video_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) pixels in [-1, 1] -> (mean, std) of the VAE posterior in the latent space the UNet
        sees (scaled or normalised), each (B, c, T, h, w), float32: latents = mean + std * eps."""

    def encode_video(
        self, pixels: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """(B, C, T, H, W) pixels in [-1, 1] -> latents (B, c, T, h, w), a posterior sample
        (``sample_posterior``: one generator for the batch, or one per sample)."""
        return sample_posterior(*self.encode_video_posterior(pixels), generator)

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, frame_chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents (B, c, T, h, w) -> pixels (B, C, T, H, W) in [-1, 1] (unclamped).

        Differentiable with respect to ``latents``; frames are decoded ``frame_chunk_size``
        at a time to bound memory. To decode only some frames, index the latents first.
        """

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` pixel video (per-frame VAEs: the same number)."""
        return num_frames

    def pixel_frames(self, num_latent_frames: int) -> int:
        """Pixel frames decoded from ``num_latent_frames`` latent frames (inverse of ``latent_frames``)."""
        return num_latent_frames

    def latent_frames_needed(self, frames: Sequence[int]) -> int:
        """How many latent frames a decode of the pixel ``frames`` touches (per-frame VAEs: one each)."""
        return len(set(frames))

    def decode_frames(
        self, latents: torch.Tensor, frames: Sequence[int], frame_chunk_size: int = 8, checkpointing: bool = False
    ) -> torch.Tensor:
        """Pixels (B, 3, len(frames), H, W) of the pixel ``frames`` (sorted, distinct) of ``latents``,
        decoding only what they need, with gradient; with ``checkpointing`` each chunk of frames is
        recomputed in backward instead of keeping its activations.

        Per-frame VAEs decode exactly the latent frames ``frames``; a causal video VAE overrides this.
        """
        selected = latents[:, :, list(frames)]
        if not checkpointing:
            return self.decode_latents(selected, frame_chunk_size)
        chunks = selected.split(frame_chunk_size, dim=2)
        return torch.cat(
            [checkpoint(self.decode_latents, c, frame_chunk_size, use_reentrant=False) for c in chunks], dim=2
        )

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """(B, c, T, h, w) of the latents of ``batch_size`` videos of ``num_frames`` x ``height`` x ``width``
        pixels (T = ``latent_frames(num_frames)``); raises ``ValueError`` when the size is not a multiple of
        the VAE's spatial factor."""
        factor = getattr(self, "vae_spatial_factor", 8)
        if height % factor or width % factor:
            raise ValueError(f"`height`={height} and `width`={width} must be multiples of the VAE factor {factor}")
        frames = self.latent_frames(num_frames)
        return (batch_size, self.unet.config.in_channels, frames, height // factor, width // factor)

    # ---- UNet -------------------------------------------------------------------------
    def noise_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) on the training grid, each (num_train_timesteps,): z_t = alpha_t x0 + sigma_t eps."""
        return noise_coefficients(self.prediction_type, alphas_cumprod=self.alphas_cumprod, sigmas=self.flow_sigmas)

    def predict(
        self,
        unet: nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embedding: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        fps: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The raw output of ``unet`` at grid indices ``timesteps``: eps for ``prediction_type``
        "epsilon", the velocity for "flow". The epsilon families' output is ``predict_eps``."""
        return self.predict_eps(unet, latents, timesteps, text_embedding, timestep_cond=timestep_cond, fps=fps)

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
        """The frozen modules the adapter holds (those ``release_encoders`` let go of are left out)."""
        held = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        return {name: module for name, module in held.items() if module is not None}

    def release_encoders(self, keep_decoder: bool, uncond_embedding: torch.Tensor,
                         prompt_embeddings: dict[str, torch.Tensor] | None = None) -> None:
        """Let go of the text encoder and the VAE's encoder (and of the whole VAE unless ``keep_decoder``), for
        runs that train from cached latents and text embeddings: called before the teacher moves to the
        training device, the modules never occupy it, and they are freed once nothing else holds them.

        Afterwards the unconditional context is ``uncond_embedding`` (L, D) and prompts are answered from
        ``prompt_embeddings`` (prompt -> (L, D), e.g. the validation prompts); any other prompt, or a video to
        encode, raises ``RuntimeError`` naming what is missing.
        """
        table = {prompt: value.detach() for prompt, value in (prompt_embeddings or {}).items()}
        uncond = uncond_embedding.detach()

        def encode_prompts(prompts: Sequence[str]) -> torch.Tensor:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            unknown = [p for p in prompts if p not in table]
            if unknown:
                raise RuntimeError(f"the text encoder was released (the run trains from cached embeddings) and "
                                   f"{unknown[0]!r} is not among the {len(table)} cached prompts")
            return torch.stack([table[p] for p in prompts]).to(self.device)

        def empty_prompt_embedding(batch_size: int) -> torch.Tensor:
            return uncond.to(self.device).expand(batch_size, -1, -1)

        def encode_video_posterior(pixels: torch.Tensor):
            raise RuntimeError("the VAE encoder was released (the run trains from cached latents): no video can be "
                               "encoded")

        # the instance's encoding paths become lookups (or refusals); the class keeps its methods
        self.encode_prompts, self.empty_prompt_embedding = encode_prompts, empty_prompt_embedding
        self.encode_video_posterior = encode_video_posterior
        self.text_encoder = None
        if keep_decoder:
            for name in ("encoder", "quant_conv"):
                if getattr(self.vae, name, None) is not None:
                    setattr(self.vae, name, None)
        else:
            self.vae = None

    def cast_network(self, network: nn.Module, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> nn.Module:
        """Move a network of this family (the teacher's or a student's) to ``device`` / ``dtype``,
        keeping whatever the family needs in higher precision."""
        return move_module(network, device=device, dtype=dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TeacherAdapter":
        """Move the frozen teacher modules (and the schedule) to ``device``/``dtype``."""
        for module in self.modules().values():
            move_module(module, device=device, dtype=dtype)
        if device is not None:
            for name in ("alphas_cumprod", "flow_sigmas"):
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def freeze(self) -> "TeacherAdapter":
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()
        return self
