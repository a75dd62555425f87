"""Multistep consistency sampling of a T2V-Turbo student (LCM multistep, no CFG).

Algorithm (T2V-Turbo, arXiv 2405.18750, sec. 4 and Alg. 1; LCM, arXiv 2310.04378, Alg. 3):
the student f_theta(z, w, c, t) = c_skip(t) z + c_out(t) x0_theta(z, w, c, t) maps a noisy
latent straight to a clean estimate. With timesteps tau_1 > ... > tau_n, starting from
z ~ N(0, I):

    for i = 1..n:
        x0      = (z - sqrt(1 - abar(tau_i)) eps_theta) / sqrt(abar(tau_i))
        denoised = c_skip(tau_i) z + c_out(tau_i) x0
        z       = sqrt(abar(tau_{i+1})) denoised + sqrt(1 - abar(tau_{i+1})) noise   (i < n)
    return denoised                                                                 (i = n)

Guidance is not classifier-free at sampling time: the scale w enters the student through its
guidance embedding, so each step is one UNet call.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_lcm import LCMScheduler, LCMSchedulerOutput

from t2v_turbo.diffusion.boundary import consistency_scalings
from t2v_turbo.diffusion.schedule import check_sampling_timesteps, multistep_timesteps, scaled_linear_alphas_cumprod

#: ``step()``'s output: diffusers' ``LCMSchedulerOutput`` (``prev_sample``: z at the next timestep, the
#: denoised sample after the last step; ``denoised``: the consistency function's estimate f_theta(z, t))
T2VTurboSchedulerOutput = LCMSchedulerOutput


def alphas_cumprod_from_config(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    alphas_cumprod: list[float] | None,
) -> torch.Tensor:
    """alpha_bar_t from an explicit list, or from a "scaled_linear" / "linear" beta schedule."""
    if alphas_cumprod is not None:
        values = torch.tensor(alphas_cumprod, dtype=torch.float32)
        if values.shape != (num_train_timesteps,):
            raise ValueError(
                f"`alphas_cumprod` has {values.numel()} values, `num_train_timesteps` is {num_train_timesteps}"
            )
        return values
    if beta_schedule == "scaled_linear":
        return scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0).float()
    raise ValueError(
        f"`beta_schedule`={beta_schedule!r} is not supported; use 'scaled_linear', 'linear' or pass `alphas_cumprod`"
    )


def noise_schedule_kwargs(adapter) -> dict:
    """Scheduler kwargs for ``adapter``'s noise schedule: its scheduler config's named beta
    schedule when it has one, else its ``alphas_cumprod`` values."""
    scheduler_config = getattr(adapter, "scheduler_config", None) or {}
    kwargs = {"num_train_timesteps": adapter.num_train_timesteps}
    if scheduler_config.get("beta_schedule") in ("scaled_linear", "linear") and scheduler_config.get("trained_betas") is None:
        kwargs.update({key: scheduler_config[key] for key in ("beta_start", "beta_end", "beta_schedule")})
    else:
        kwargs["alphas_cumprod"] = adapter.alphas_cumprod.cpu().tolist()
    return kwargs


class T2VTurboScheduler(LCMScheduler):
    """Multistep consistency sampler of T2V-Turbo: diffusers' ``LCMScheduler`` where it computes the
    same thing (``step``: x0 from eps, f = c_skip z + c_out x0, re-noising with the same draws), and
    ours where it differs (each difference is shown by tests/test_sampler.py):

    - the noise schedule is the trainer's alpha_bar (``scaled_linear_alphas_cumprod``, computed in
      float64 and rounded once, or an explicit ``alphas_cumprod``), not LCMScheduler's float32 cumulative
      product (they differ by up to about 1e-6), so sampling uses the exact schedule of distillation;
    - ``sigma_data`` is a constructor argument (LCMScheduler hard-codes 0.5 inside a method);
    - ``set_timesteps`` offers T2V-Turbo's spacing ([999, 759, 519, 279] for 4 steps) besides
      LCMScheduler's ([999, 759, 499, 259]), and explicit timesteps with one warning for off-grid points;
    - ``step`` names a timestep that is not scheduled instead of failing with an index error.

    Args:
        num_train_timesteps (`int`, defaults to 1000): length of the teacher's training grid.
        beta_start (`float`, defaults to 0.00085), beta_end (`float`, defaults to 0.012),
        beta_schedule (`str`, defaults to "scaled_linear"): the teacher's noise schedule.
        alphas_cumprod (`list[float]`, *optional*): explicit alpha_bar_t, overriding the betas
            (for teachers whose schedule is not a named beta schedule).
        num_ddim_timesteps (`int`, defaults to 50): N, the DDIM grid the student was distilled on
            (LCMScheduler's ``original_inference_steps``).
        sigma_data (`float`, defaults to 0.5), timestep_scaling (`float`, defaults to 10.0): the
            boundary-condition scalings c_skip = s^2 / ((a t)^2 + s^2), c_out = a t / sqrt((a t)^2 + s^2).
        spacing (`str`, defaults to "t2v_turbo"): how ``set_timesteps(n)`` picks n of the N grid
            points. "t2v_turbo": [999, 759, 519, 279] for 4 steps (the released sampler);
            "lcm": diffusers' LCMScheduler rule, [999, 759, 499, 259].
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        alphas_cumprod: list[float] | None = None,
        num_ddim_timesteps: int = 50,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        spacing: str = "t2v_turbo",
    ):
        if spacing not in ("t2v_turbo", "lcm"):
            raise ValueError(f"`spacing`={spacing!r} is not one of 't2v_turbo', 'lcm'")
        schedule = alphas_cumprod_from_config(num_train_timesteps, beta_start, beta_end, beta_schedule, alphas_cumprod)
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule="linear" if beta_schedule not in ("linear", "scaled_linear") else beta_schedule,
            original_inference_steps=num_ddim_timesteps, clip_sample=False, set_alpha_to_one=False,
            prediction_type="epsilon", timestep_scaling=timestep_scaling,
        )
        # the one table that differs from LCMScheduler's: the trainer's schedule
        self.alphas_cumprod = schedule
        self.final_alpha_cumprod = schedule[0]

    @classmethod
    def from_adapter(cls, adapter, **kwargs) -> "T2VTurboScheduler":
        """A scheduler on ``adapter``'s noise schedule; ``kwargs`` set the other options."""
        return cls(**{**noise_schedule_kwargs(adapter), **kwargs})

    def get_scalings_for_boundary_condition_discrete(self, timestep):
        """(c_skip, c_out) at ``timestep`` with the configured ``sigma_data`` (``consistency_scalings``)."""
        return consistency_scalings(torch.as_tensor(timestep), self.config.sigma_data, self.config.timestep_scaling)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: ``num_inference_steps`` by the configured spacing, or an
        explicit descending ``timesteps`` list (a warning is given for points off the DDIM grid)."""
        config = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of `num_inference_steps` and `timesteps`")
        if timesteps is None:
            timesteps = multistep_timesteps(
                num_inference_steps, config.num_train_timesteps, config.num_ddim_timesteps, config.spacing
            )
        timesteps = check_sampling_timesteps(timesteps, config.num_train_timesteps, config.num_ddim_timesteps)
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        self.num_inference_steps = len(timesteps)
        self.custom_timesteps = True
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One consistency step from ``timestep`` (``LCMScheduler.step``).

        Args:
            model_output (`torch.Tensor`): the student's eps prediction at (sample, timestep).
            timestep (`int`): the current timestep; must be one of ``self.timesteps``.
            sample (`torch.Tensor`): z at ``timestep``.
            generator (`torch.Generator`, *optional*): source of the re-noising draw
                ``torch.randn(sample.shape, generator=generator)``, taken only before a non-final step.
        """
        if self.timesteps is None or self.num_inference_steps is None:
            raise ValueError("`timesteps` is not set: run `set_timesteps(num_inference_steps)` first")
        t = int(timestep)
        positions = (self.timesteps == t).nonzero()
        if len(positions) != 1:
            raise ValueError(f"`timestep`={t} is not one of the scheduled timesteps {self.timesteps.tolist()}")
        self._step_index = int(positions[0])  # steps may be taken in any order, as each names its timestep
        return super().step(model_output, self.timesteps[self._step_index], sample, generator, return_dict)
