"""Rectified-flow (flow-matching) process: the math of Wan-style teachers and their students.

Notation (Wan2.1 / diffusers' ``FlowMatch*`` schedulers): sigma in [0, 1], sigma = 1 is pure noise,

    x_sigma = (1 - sigma) x0 + sigma eps,          the interpolation (forward process)
    v       = eps - x0,                            what the network predicts ("flow_prediction")
    x0      = x_sigma - sigma v,                   eps = x_sigma + (1 - sigma) v,

and the network is conditioned on the timestep t = T sigma (T = ``num_train_timesteps``, 1000).

The training grid: index i = 0..T-1 has sigma_i = shift((i + 1) / T), the sigmas of diffusers'
``FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=s)`` read from low to high noise,
so index T - 1 is sigma = 1 and the integer-timestep conventions of the epsilon families (a
(B,) long tensor of grid indices, a DDIM grid of indices, t_n = t_{n+k} - k) carry over unchanged.

Pure tensor functions: no I/O, no globals, no rank logic.
"""

from __future__ import annotations

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The shifted schedule sigma' = s sigma / (1 + (s - 1) sigma).

    s > 1 moves every sigma towards 1 (more steps at high noise); s = 1 is the identity; sigma = 0
    and sigma = 1 are fixed points. Wan uses s = 3.0 at 480p and 5.0 at 720p (``flow_shift``).
    """
    if shift <= 0:
        raise ValueError(f"`shift`={shift} must be positive")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_training_sigmas(num_train_timesteps: int = 1000, shift: float = 1.0) -> torch.Tensor:
    """sigma_i = shift((i + 1) / T) for grid index i = 0..T-1, float32, increasing (sigma_{T-1} = 1).

    Computed in float64 and rounded once; equal to ``FlowMatchEulerDiscreteScheduler(T, shift).sigmas``
    reversed to within float32 rounding (diffusers computes in float32).
    """
    unshifted = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return shift_sigmas(unshifted, shift).float()


def flow_add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Forward process x_sigma = (1 - sigma) x0 + sigma eps (``sigma`` broadcastable to ``x0``)."""
    return (1 - sigma) * x0 + sigma * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target of flow matching, v = eps - x0 = d x_sigma / d sigma."""
    return noise - x0


def x0_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = x_sigma - sigma v.

    This is also the consistency function of a flow student: at sigma = 0 it returns x_sigma
    itself, so the boundary condition f(x, 0) = x holds without LCM's c_skip / c_out scalings
    (which is what diffusers' ``FlowMatchLCMScheduler.step`` denoises with).
    """
    return x_t - sigma * velocity


def eps_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = x_sigma + (1 - sigma) v."""
    return x_t + (1 - sigma) * velocity


def flow_euler_step(
    x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow ODE d x / d sigma = v from sigma to sigma_next:

        x_{sigma'} = x_sigma + (sigma' - sigma) v = (1 - sigma') x0 + sigma' eps,

    with (x0, eps) the conversions of v above: the deterministic DDIM step written in flow
    variables, i.e. the teacher's solver step of consistency distillation.
    """
    return x_t + (sigma_next - sigma) * velocity


def flow_model_timesteps(sigmas: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The timestep a flow network is conditioned on: t = T sigma (float)."""
    return sigmas * num_train_timesteps
