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

import dataclasses

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from t2v_turbo.diffusion.schedule import leading_timesteps
from t2v_turbo.diffusion.solver import ddim_solver_step, x0_from_eps
from t2v_turbo.sampler.scheduling_t2v_turbo import alphas_cumprod_from_config, noise_schedule_kwargs


@dataclasses.dataclass
class DDIMCFGSchedulerOutput(BaseOutput):
    """Output of ``DDIMCFGScheduler.step``.

    Args:
        prev_sample (`torch.Tensor`): z at the previous (lower) timestep.
        pred_original_sample (`torch.Tensor`): the x0 estimate at the current timestep.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u): standard CFG with scale s."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


class DDIMCFGScheduler(SchedulerMixin, ConfigMixin):
    """DDIM (eta = 0) with classifier-free guidance, the teacher's 50-step sampler.

    Args:
        num_train_timesteps (`int`, defaults to 1000), beta_start, beta_end, beta_schedule,
        alphas_cumprod: the teacher's noise schedule (as in ``T2VTurboScheduler``).
        steps_offset (`int`, defaults to 1): added to the "leading" timesteps (ModelScope uses 1).
    """

    order = 1

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
        self.alphas_cumprod = alphas_cumprod_from_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, alphas_cumprod
        )
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    @classmethod
    def from_adapter(cls, adapter, **kwargs) -> "DDIMCFGScheduler":
        """A scheduler on ``adapter``'s noise schedule and steps offset."""
        scheduler_config = getattr(adapter, "scheduler_config", None) or {}
        if "steps_offset" in scheduler_config:
            kwargs.setdefault("steps_offset", scheduler_config["steps_offset"])
        return cls(**{**noise_schedule_kwargs(adapter), **kwargs})

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Leading spacing: t_i = i * (T // n) + steps_offset, high to low."""
        timesteps = leading_timesteps(num_inference_steps, self.config.num_train_timesteps, self.config.steps_offset)
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        self.num_inference_steps = num_inference_steps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> DDIMCFGSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from ``timestep``; ``model_output`` is the guided eps
        (``classifier_free_guidance(eps_c, eps_u, s)``)."""
        if self.num_inference_steps is None:
            raise ValueError("`timesteps` is not set: run `set_timesteps(num_inference_steps)` first")
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alphas_cumprod = self.alphas_cumprod.to(sample.device)
        # 1. x0 from eps (DDIM eq. 12, "predicted x0")
        x0 = x0_from_eps(sample, model_output, alphas_cumprod[t].to(sample.dtype))
        # 2. deterministic step to prev_t; below the grid abar_prev = abar[0] (set_alpha_to_one=False)
        abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else alphas_cumprod[0]
        prev_sample = ddim_solver_step(x0, model_output, abar_prev.to(sample.dtype))
        if not return_dict:
            return prev_sample, x0
        return DDIMCFGSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
