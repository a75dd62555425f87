"""Boundary conditions of the consistency function (LCM parameterisation).

f_theta(z, t) = c_skip(t) z + c_out(t) x0_theta(z, t), with
c_skip(t) = s^2 / ((a t)^2 + s^2),  c_out(t) = a t / sqrt((a t)^2 + s^2),
s = sigma_data (0.5) and a the timestep scaling (10). At t = 0, c_skip = 1 and c_out = 0,
so f(z, 0) = z: the boundary condition of consistency models.
"""

from __future__ import annotations

import torch

from t2v_turbo.diffusion.solver import append_dims


def consistency_scalings(
    timesteps: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at integer ``timesteps``, each of shape (B,)."""
    scaled = timesteps.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_output(
    z_t: torch.Tensor,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """f = c_skip(t) z_t + c_out(t) x0."""
    c_skip, c_out = consistency_scalings(timesteps, sigma_data, timestep_scaling)
    return append_dims(c_skip, z_t.ndim).to(z_t.dtype) * z_t + append_dims(c_out, z_t.ndim).to(z_t.dtype) * x0
