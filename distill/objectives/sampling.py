"""Sampling chains that carry a reward's gradient back into the trained model (VADER, InstructVideo).

Two chains, each written with the adapter's (alpha_t, sigma_t) and prediction type
(``t2v_turbo.diffusion.prediction``), so epsilon and flow models run the same code:

- ``ddim_cfg_chain``: DDIM with classifier-free guidance, out = out_u + s (out_c - out_u) on the raw
  output (eps or velocity), then (x0, eps) from it and the step
  z_prev = alpha_prev x0 + sqrt(sigma_prev^2 - s_eta^2) eps + s_eta noise (``ddim_step``);
  the full-step model's sampler (VADER: 25 steps, eta 1, CFG 12; InstructVideo: the last 12 of 20).
- ``consistency_chain``: the student's multistep consistency sampler (one call per step, the guidance
  scale in the guidance embedding): denoised = f(z, t); z = alpha_next denoised + sigma_next noise.

Truncated backpropagation: steps before ``first_grad_step`` run under ``torch.no_grad`` on the plain
module and build no graph; the steps from it on run with gradient through ``model`` (which the trainer
may have wrapped, e.g. in DDP). ``first_grad_step`` picks that step the ways VADER's public code does.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Callable, ClassVar, Sequence

import torch
from torch import nn

from t2v_turbo.diffusion.prediction import (
    consistency_function,
    ddim_noise_std,
    ddim_step,
    interpolate,
    previous_coefficients,
    x0_eps_from_output,
)
from t2v_turbo.diffusion.schedule import leading_timesteps, multistep_timesteps
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.schema import Range

BACKPROP_MODES = ("last", "random", "specific")


def first_grad_step(
    num_steps: int,
    mode: str = "last",
    backprop_steps: int = 1,
    cutoff: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Index of the first of ``num_steps`` sampling steps that runs with gradient.

    ``last``: the last ``backprop_steps`` (K) steps, num_steps - K (K = 1: only the final step);
    ``random``: uniform in [0, num_steps - 1] (VADER's 'rand': K uniform in 1..num_steps);
    ``specific``: the step index ``cutoff``.
    """
    if mode == "last":
        if not 1 <= backprop_steps <= num_steps:
            raise ValueError(f"`backprop_steps`={backprop_steps} must be in [1, {num_steps}] (the sampling steps)")
        return num_steps - backprop_steps
    if mode == "random":
        return int(torch.randint(0, num_steps, (), generator=generator))
    if mode == "specific":
        if cutoff is None or not 0 <= cutoff < num_steps:
            raise ValueError(f"`backprop_cutoff`={cutoff} must be a step index in [0, {num_steps - 1}]")
        return cutoff
    raise ValueError(f"`backprop`={mode!r} is not one of {BACKPROP_MODES}")


def draw_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per sample, each from its own generator, stacked (B, *shape)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _step_context(index: int, first_grad: int):
    return torch.enable_grad() if index >= first_grad else torch.no_grad()


def ddim_cfg_chain(
    adapter,
    model: nn.Module,
    plain_model: nn.Module,
    z: torch.Tensor,
    timesteps: Sequence[int],
    text_embedding: torch.Tensor,
    uncond_embedding: torch.Tensor,
    guidance_scale: float,
    eta: float,
    first_grad: int,
    noise: Callable[[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run DDIM + CFG from z at ``timesteps[0]`` down through ``timesteps`` (descending); returns the
    latents after the last step (which lands below the grid: ``previous_coefficients``).

    ``noise(i)`` gives the fresh noise of step i (needed when eta > 0). ``guidance_scale`` is the
    standard CFG scale s (1 = the conditional model alone, one call per step).
    """
    alpha, sigma = (c.to(z.device) for c in adapter.noise_coefficients())
    batch = z.shape[0]
    use_cfg = guidance_scale != 1.0
    context = torch.cat([uncond_embedding, text_embedding]) if use_cfg else text_embedding
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        with _step_context(i, first_grad):
            net = model if i >= first_grad else plain_model
            z_in = torch.cat([z, z]) if use_cfg else z
            t_batch = torch.full((z_in.shape[0],), int(t), dtype=torch.long, device=z.device)
            output = adapter.predict(net, z_in, t_batch, context).to(z.dtype)
            if use_cfg:
                out_u, out_c = output.split(batch)
                output = out_u + guidance_scale * (out_c - out_u)
            x0, eps = x0_eps_from_output(adapter.prediction_type, z, output, alpha[t], sigma[t])
            alpha_prev, sigma_prev = previous_coefficients(adapter.prediction_type, alpha, sigma, prev)
            std = ddim_noise_std(alpha[t], sigma[t], alpha_prev, sigma_prev, eta)
            z = ddim_step(x0, eps, alpha_prev, sigma_prev, std, noise(i).to(z) if eta > 0 else None)
    return z


def consistency_chain(
    adapter,
    model: nn.Module,
    plain_model: nn.Module,
    z: torch.Tensor,
    timesteps: Sequence[int],
    text_embedding: torch.Tensor,
    guidance_embedding: torch.Tensor,
    sigma_data: float,
    timestep_scaling: float,
    first_grad: int,
    noise: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """The student's multistep consistency sampler from z at ``timesteps[0]``; returns the last denoised
    estimate. ``noise(i)`` gives the re-noising draw after step i (not drawn after the last step)."""
    alpha, sigma = (c.to(z.device) for c in adapter.noise_coefficients())
    for i, t in enumerate(timesteps):
        with _step_context(i, first_grad):
            net = model if i >= first_grad else plain_model
            t_batch = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
            output = adapter.predict(net, z, t_batch, text_embedding, timestep_cond=guidance_embedding).to(z.dtype)
            x0, _ = x0_eps_from_output(adapter.prediction_type, z, output, alpha[t], sigma[t])
            denoised = consistency_function(adapter.prediction_type, z, x0, t_batch, sigma_data, timestep_scaling)
            if i + 1 < len(timesteps):
                t_next = timesteps[i + 1]
                z = interpolate(denoised, noise(i).to(z), alpha[t_next], sigma[t_next])
    return denoised


def sampler_timesteps(adapter, meta, num_steps: int) -> list[int]:
    """The timesteps the model samples with, high to low: the student's multistep consistency grid
    (``multistep_timesteps`` on its distillation grid) when ``meta`` has a guidance layer, else DDIM's
    leading timesteps with the teacher scheduler's ``steps_offset`` (1 when it names none, as the teacher
    sampler ``DDIMCFGScheduler`` and VideoCrafter's DDIM)."""
    if meta.time_cond_proj_dim is not None:
        return multistep_timesteps(num_steps, adapter.num_train_timesteps, meta.num_ddim_timesteps)
    offset = (getattr(adapter, "scheduler_config", None) or {}).get("steps_offset", 1)
    return leading_timesteps(num_steps, adapter.num_train_timesteps, offset)


def model_chain(
    adapter,
    meta,
    model: nn.Module,
    plain_model: nn.Module,
    z: torch.Tensor,
    timesteps: Sequence[int],
    text_embedding: torch.Tensor,
    uncond_embedding: torch.Tensor,
    guidance_scale: float,
    eta: float,
    first_grad: int,
    noise: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """The model's own sampler over ``timesteps``: ``consistency_chain`` for a student (``guidance_scale``
    is its guidance-embedding scale w), ``ddim_cfg_chain`` for a full-step model (the CFG scale s)."""
    if meta.time_cond_proj_dim is not None:
        w = torch.full((z.shape[0],), float(guidance_scale), device=z.device)
        w_embedding = guidance_scale_embedding(w, meta.time_cond_proj_dim).to(z.device)
        return consistency_chain(adapter, model, plain_model, z, timesteps, text_embedding, w_embedding,
                                 meta.sigma_data, meta.timestep_scaling, first_grad, noise)
    return ddim_cfg_chain(adapter, model, plain_model, z, timesteps, text_embedding, uncond_embedding,
                          guidance_scale, eta, first_grad, noise)


@dataclasses.dataclass
class ModelSampling:
    """The config keys of an objective that samples videos with the trained model's own sampler (a dataclass
    mixin): ``num_inference_steps`` and ``guidance_scale`` (default: a student's own; a full-step model's
    ``full_step_steps`` DDIM steps at CFG ``full_step_guidance``, set by the objective) and the sampled videos'
    ``num_frames``, ``height``, ``width`` (default: the teacher's), which the saved model records as its
    sampling default."""

    full_step_steps: ClassVar[int]
    full_step_guidance: ClassVar[float]

    num_inference_steps: Annotated[int, Range(ge=1)] | None = None
    guidance_scale: Annotated[float, Range(ge=0)] | None = None
    num_frames: Annotated[int, Range(ge=1)] | None = None
    height: Annotated[int, Range(ge=1)] | None = None
    width: Annotated[int, Range(ge=1)] | None = None

    def model_meta(self) -> dict:
        """The geometry of the sampled videos, when set, as the saved model's sampling default."""
        geometry = {"num_frames": self.num_frames, "height": self.height, "width": self.width}
        return {key: value for key, value in geometry.items() if value is not None}

    def bind_sampler(self, adapter, meta) -> None:
        """Set ``steps``, ``scale`` (the model's guidance), ``timesteps`` (``sampler_timesteps``) and
        ``sample_shape`` (one sampled video's latent shape) for the model ``meta`` describes."""
        student = meta.time_cond_proj_dim is not None
        self.steps = self.num_inference_steps or (meta.num_inference_steps if student else self.full_step_steps)
        self.scale = self.guidance_scale if self.guidance_scale is not None else (
            meta.guidance_scale if student else self.full_step_guidance)
        self.timesteps = sampler_timesteps(adapter, meta, self.steps)
        self.sample_shape = adapter.latent_shape(1, self.num_frames or adapter.default_num_frames,
                                                 self.height or adapter.default_height,
                                                 self.width or adapter.default_width)[1:]
