"""The teacher's sampler: deterministic DDIM (eta = 0) with classifier-free guidance.

DDIM (Song et al. 2021, arXiv 2010.02502, eq. 12 with sigma_t = 0), on "leading" timesteps
t_i = i * (T // n) + steps_offset as ModelScope's DDIMScheduler config sets them
(50 steps: 981, 961, ..., 1):

    eps      = eps_u + s (eps_c - eps_u)             classifier-free guidance, scale s
    x0       = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    z_{prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps,   prev = t - T // n

with abar_prev = abar[0] below the grid (``set_alpha_to_one=False``).

Scale convention: ``guidance_scale`` is the standard CFG scale s (s = 1: the conditional model;
ModelScope's default 9, T2V-Turbo comparisons 7.5). It equals 1 + w in the LCM convention
``cond + w (cond - uncond)`` that the distillation uses (``t2v_turbo.diffusion.solver.cfg_lcm_form``).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMScheduler, DDIMSchedulerOutput

from t2v_turbo.sampler.scheduling_t2v_turbo import alphas_cumprod_from_config, noise_schedule_kwargs

#: ``step()``'s output: diffusers' ``DDIMSchedulerOutput`` (``prev_sample``: z at the previous, lower
#: timestep; ``pred_original_sample``: the x0 estimate at the current timestep)
DDIMCFGSchedulerOutput = DDIMSchedulerOutput


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u): standard CFG with scale s."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


class DDIMCFGScheduler(DDIMScheduler):
    """DDIM (eta = 0) on the teacher's schedule: diffusers' ``DDIMScheduler`` (``step`` and the
    "leading" ``set_timesteps``, with ``set_alpha_to_one=False``, no clipping) on the trainer's
    alpha_bar table instead of its float32 cumulative product (the one difference; see
    ``T2VTurboScheduler`` and tests/test_sampler.py).

    Args:
        num_train_timesteps (`int`, defaults to 1000), beta_start, beta_end, beta_schedule,
        alphas_cumprod: the teacher's noise schedule (as in ``T2VTurboScheduler``).
        steps_offset (`int`, defaults to 1): added to the "leading" timesteps (ModelScope uses 1).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        alphas_cumprod: list[float] | None = None,
        steps_offset: int = 1,
    ):
        schedule = alphas_cumprod_from_config(num_train_timesteps, beta_start, beta_end, beta_schedule, alphas_cumprod)
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule="linear" if beta_schedule not in ("linear", "scaled_linear") else beta_schedule,
            clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset, prediction_type="epsilon",
            timestep_spacing="leading",
        )
        self.alphas_cumprod = schedule
        self.final_alpha_cumprod = schedule[0]

    @classmethod
    def from_adapter(cls, adapter, **kwargs) -> "DDIMCFGScheduler":
        """A scheduler on ``adapter``'s noise schedule and steps offset."""
        scheduler_config = getattr(adapter, "scheduler_config", None) or {}
        if "steps_offset" in scheduler_config:
            kwargs.setdefault("steps_offset", scheduler_config["steps_offset"])
        return cls(**{**noise_schedule_kwargs(adapter), **kwargs})
