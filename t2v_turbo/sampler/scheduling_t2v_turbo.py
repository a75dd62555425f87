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

import dataclasses
import warnings

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from t2v_turbo.diffusion.boundary import consistency_output
from t2v_turbo.diffusion.schedule import ddim_timesteps, multistep_timesteps, scaled_linear_alphas_cumprod
from t2v_turbo.diffusion.solver import add_noise, x0_from_eps


@dataclasses.dataclass
class T2VTurboSchedulerOutput(BaseOutput):
    """Output of ``T2VTurboScheduler.step``.

    Args:
        prev_sample (`torch.Tensor`): z at the next timestep (the denoised sample after the last step).
        denoised (`torch.Tensor`): the consistency function's clean estimate f_theta(z, t).
    """

    prev_sample: torch.Tensor
    denoised: torch.Tensor


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


class T2VTurboScheduler(SchedulerMixin, ConfigMixin):
    """Multistep consistency sampler of T2V-Turbo.

    Args:
        num_train_timesteps (`int`, defaults to 1000): length of the teacher's training grid.
        beta_start (`float`, defaults to 0.00085), beta_end (`float`, defaults to 0.012),
        beta_schedule (`str`, defaults to "scaled_linear"): the teacher's noise schedule.
        alphas_cumprod (`list[float]`, *optional*): explicit alpha_bar_t, overriding the betas
            (for teachers whose schedule is not a named beta schedule).
        num_ddim_timesteps (`int`, defaults to 50): N, the DDIM grid the student was distilled on.
        sigma_data (`float`, defaults to 0.5), timestep_scaling (`float`, defaults to 10.0): the
            boundary-condition scalings c_skip = s^2 / ((a t)^2 + s^2), c_out = a t / sqrt((a t)^2 + s^2).
        spacing (`str`, defaults to "t2v_turbo"): how ``set_timesteps(n)`` picks n of the N grid
            points. "t2v_turbo": [999, 759, 519, 279] for 4 steps (the released sampler);
            "lcm": diffusers' LCMScheduler rule, [999, 759, 499, 259].
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
        num_ddim_timesteps: int = 50,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        spacing: str = "t2v_turbo",
    ):
        if spacing not in ("t2v_turbo", "lcm"):
            raise ValueError(f"`spacing`={spacing!r} is not one of 't2v_turbo', 'lcm'")
        self.alphas_cumprod = alphas_cumprod_from_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, alphas_cumprod
        )
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    @classmethod
    def from_adapter(cls, adapter, **kwargs) -> "T2VTurboScheduler":
        """A scheduler on ``adapter``'s noise schedule; ``kwargs`` set the other options."""
        return cls(**{**noise_schedule_kwargs(adapter), **kwargs})

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Identity: the consistency model takes z_t unscaled (kept for diffusers' scheduler API)."""
        return sample

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
        timesteps = [int(t) for t in timesteps]
        if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
            raise ValueError(f"`timesteps`={timesteps} must be strictly decreasing")
        if timesteps[0] >= config.num_train_timesteps or timesteps[-1] < 0:
            raise ValueError(f"`timesteps`={timesteps} must lie in [0, {config.num_train_timesteps - 1}]")
        grid = set(ddim_timesteps(config.num_train_timesteps, config.num_ddim_timesteps).tolist())
        off_grid = [t for t in timesteps if t not in grid]
        if off_grid:
            warnings.warn(
                f"timesteps {off_grid} are not on the {config.num_ddim_timesteps}-point DDIM grid the student "
                "was distilled on; results may degrade"
            )
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        self.num_inference_steps = len(timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> T2VTurboSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One consistency step from ``timestep``.

        Args:
            model_output (`torch.Tensor`): the student's eps prediction at (sample, timestep).
            timestep (`int`): the current timestep; must be one of ``self.timesteps``.
            sample (`torch.Tensor`): z at ``timestep``.
            generator (`torch.Generator`, *optional*): source of the re-noising draw
                ``torch.randn(sample.shape, generator=generator)``, taken only before a non-final
                step, exactly as diffusers' ``LCMScheduler`` draws it.
        """
        if self.timesteps is None:
            raise ValueError("`timesteps` is not set: run `set_timesteps(num_inference_steps)` first")
        t = int(timestep)
        positions = (self.timesteps == t).nonzero()
        if len(positions) != 1:
            raise ValueError(f"`timestep`={t} is not one of the scheduled timesteps {self.timesteps.tolist()}")
        index = int(positions[0])
        alphas_cumprod = self.alphas_cumprod.to(sample.device)
        t_batch = torch.full((sample.shape[0],), t, dtype=torch.long, device=sample.device)

        # 1. x0 from the eps prediction (z_t = sqrt(abar) x0 + sqrt(1 - abar) eps)
        abar_t = alphas_cumprod[t].to(sample.dtype)
        x0 = x0_from_eps(sample, model_output, abar_t)
        # 2. consistency function f = c_skip(t) z + c_out(t) x0
        denoised = consistency_output(
            sample, x0, t_batch, sigma_data=self.config.sigma_data, timestep_scaling=self.config.timestep_scaling
        )
        # 3. re-noise to the next timestep, except after the last one
        if index + 1 < len(self.timesteps):
            t_next = int(self.timesteps[index + 1])
            noise_device = generator.device if generator is not None else sample.device
            noise = torch.randn(sample.shape, generator=generator, device=noise_device, dtype=denoised.dtype)
            prev_sample = add_noise(denoised, noise.to(sample.device), alphas_cumprod[t_next].to(sample.dtype))
        else:
            prev_sample = denoised
        if not return_dict:
            return prev_sample, denoised
        return T2VTurboSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
