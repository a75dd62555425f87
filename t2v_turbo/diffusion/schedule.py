"""Noise schedules and timestep grids of latent consistency distillation.

Pure tensor functions: no I/O, no globals, no rank logic.
"""

from __future__ import annotations

import warnings

import torch


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """alpha_bar_t of the "scaled_linear" schedule used by ModelScope-T2V and VideoCrafter2.

    beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)**2 (computed in float64),
    alpha_bar_t = prod_{s<=t} (1 - beta_s). Returned in float32; alpha_bar_999 is about 0.00466.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_timesteps(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The DDIM solver grid t_i = (i + 1) * k - 1 for i = 0..N-1, with k = T // N.

    For T = 1000 and N = 50: [19, 39, ..., 999]. The skip between neighbours is k = T // N (20).
    """
    if num_train_timesteps % num_ddim_timesteps != 0:
        raise ValueError(
            f"`num_ddim_timesteps`={num_ddim_timesteps} must divide `num_train_timesteps`={num_train_timesteps}"
        )
    step = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * step - 1


def leading_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0) -> list[int]:
    """The DDIM sampler's "leading" timesteps, high to low: t_i = i * (T // n) + steps_offset, i = n-1..0.

    ModelScope's and VideoCrafter's samplers use steps_offset 1: 50 steps give 981, 961, ..., 1; 25 steps
    961, 921, ..., 1.
    """
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"`num_inference_steps`={num_inference_steps} must be in [1, {num_train_timesteps}]")
    step_ratio = num_train_timesteps // num_inference_steps
    return [i * step_ratio + steps_offset for i in range(num_inference_steps - 1, -1, -1)]


def previous_timestep(timestep: torch.Tensor, skip: int) -> torch.Tensor:
    """t_n = t_{n+k} - skip, floored at 0 (the solver's target timestep)."""
    return (timestep - skip).clamp(min=0)


def multistep_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    num_ddim_timesteps: int = 50,
    spacing: str = "t2v_turbo",
) -> list[int]:
    """Timesteps of the consistency sampler, high to low.

    ``spacing="t2v_turbo"``: origin = the DDIM grid, skip = N // n, timesteps =
    origin[::-1][::skip][:n]; 4 steps of N = 50 give [999, 759, 519, 279].
    ``spacing="lcm"``: diffusers' LCMScheduler rule, indices floor(linspace(0, N, n, endpoint=False))
    into origin[::-1]; 4 steps give [999, 759, 499, 259].
    """
    if not 1 <= num_inference_steps <= num_ddim_timesteps:
        raise ValueError(
            f"`num_inference_steps`={num_inference_steps} must be in [1, {num_ddim_timesteps}] "
            f"(the DDIM grid has {num_ddim_timesteps} points)"
        )
    origin = ddim_timesteps(num_train_timesteps, num_ddim_timesteps).flip(0)
    if spacing == "t2v_turbo":
        skip = num_ddim_timesteps // num_inference_steps
        picked = origin[::skip][:num_inference_steps]
    elif spacing == "lcm":
        idx = torch.floor(torch.linspace(0, num_ddim_timesteps, num_inference_steps + 1)[:-1]).long()
        picked = origin[idx]
    else:
        raise ValueError(f"`spacing`={spacing!r} is not one of 't2v_turbo', 'lcm'")
    return [int(t) for t in picked]


def check_sampling_timesteps(
    timesteps: list[int], num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50
) -> list[int]:
    """Explicit sampling timesteps as ints: strictly decreasing grid indices in [0, T - 1] (else
    ``ValueError``), with a warning for points off the ``num_ddim_timesteps``-point DDIM grid."""
    timesteps = [int(t) for t in timesteps]
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"`timesteps`={timesteps} must be strictly decreasing")
    if not timesteps or timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
        raise ValueError(f"`timesteps`={timesteps} must lie in [0, {num_train_timesteps - 1}]")
    grid = set(ddim_timesteps(num_train_timesteps, num_ddim_timesteps).tolist())
    off_grid = [t for t in timesteps if t not in grid]
    if off_grid:
        warnings.warn(
            f"timesteps {off_grid} are not on the {num_ddim_timesteps}-point DDIM grid the student "
            "was distilled on; results may degrade"
        )
    return timesteps
