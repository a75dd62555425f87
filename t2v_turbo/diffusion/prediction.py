"""What a network's output means, and the conversions the trainer and samplers pick from it.

Every teacher family writes its noisy latents as

    z_t = alpha_t x0 + sigma_t eps

on its training grid (indices t = 0..T-1):

- ``"epsilon"`` (ModelScope, VideoCrafter2): alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t);
  the network predicts eps.
- ``"flow"`` (Wan2.1/2.2, rectified flow): alpha_t = 1 - sigma_t, sigma_t = shift((t + 1) / T)
  (``t2v_turbo.diffusion.flow``); the network predicts the velocity v = eps - x0.

With (alpha, sigma) the forward process and the teacher's deterministic DDIM step are the same
formula (``interpolate``), so consistency distillation and multistep sampling need, per
prediction type, only the map from the network output to (x0, eps) and the consistency
function's boundary. Those two live here; nothing else is written per family.
"""

from __future__ import annotations

import torch

from t2v_turbo.diffusion.boundary import consistency_output
from t2v_turbo.diffusion.flow import eps_from_velocity, flow_velocity, x0_from_velocity

PREDICTION_TYPES = ("epsilon", "flow")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type`={prediction_type!r} is not one of {PREDICTION_TYPES}")
    return prediction_type


def noise_coefficients(
    prediction_type: str, alphas_cumprod: torch.Tensor | None = None, sigmas: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) on the training grid, each (T,) float32.

    ``"epsilon"`` takes ``alphas_cumprod``: (sqrt(abar), sqrt(1 - abar)).
    ``"flow"`` takes the flow ``sigmas``: (1 - sigma, sigma).
    """
    if check_prediction_type(prediction_type) == "epsilon":
        if alphas_cumprod is None:
            raise ValueError("prediction_type 'epsilon' needs `alphas_cumprod`")
        return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    if sigmas is None:
        raise ValueError("prediction_type 'flow' needs the flow `sigmas`")
    return 1 - sigmas, sigmas


def interpolate(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z = alpha x0 + sigma eps.

    At the sample's own (alpha_t, sigma_t) this is the forward process; at a lower noise level
    (alpha_prev, sigma_prev), with (x0, eps) predicted at t, it is the deterministic DDIM step
    (Song et al. 2021, eq. 12, eta = 0), which for a flow model is the Euler step of its ODE.
    """
    return alpha * x0 + sigma * eps


def previous_coefficients(
    prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor, prev_t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) a sampling step lands on: the grid's at ``prev_t``, or, below the grid (prev_t < 0),
    the grid's first point for ``"epsilon"`` (DDIM's ``set_alpha_to_one=False``, as ModelScope and
    VideoCrafter sample) and the clean end sigma = 0 for ``"flow"`` (where diffusers' flow schedulers end)."""
    if prev_t >= 0:
        return alpha[prev_t], sigma[prev_t]
    if check_prediction_type(prediction_type) == "epsilon":
        return alpha[0], sigma[0]
    return torch.ones_like(alpha[0]), torch.zeros_like(sigma[0])


def ddim_noise_std(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_prev: torch.Tensor, sigma_prev: torch.Tensor, eta: float
) -> torch.Tensor:
    """The standard deviation s of the fresh noise of a stochastic DDIM step t -> prev (Song et al. 2021, eq. 16):

        s = eta * (sigma_prev / sigma_t) * sqrt(sigma_t^2 - (alpha_t / alpha_prev)^2 sigma_prev^2),

    eta times the std of the posterior q(z_prev | z_t, x0) of the Gaussian process z = alpha x0 + sigma eps.
    For epsilon teachers this is DDIM's eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev);
    eta = 0 is the deterministic step, eta = 1 the ancestral (DDPM) one.
    """
    if eta == 0:
        return torch.zeros_like(sigma_t)
    variance = (sigma_t**2 - (alpha_t / alpha_prev) ** 2 * sigma_prev**2).clamp(min=0)
    return eta * sigma_prev / sigma_t * variance.sqrt()


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_prev: torch.Tensor,
    sigma_prev: torch.Tensor,
    noise_std: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """z_prev = alpha_prev x0 + sqrt(sigma_prev^2 - s^2) eps + s noise (DDIM eq. 12 with s = ``ddim_noise_std``).

    With s = 0 it is ``interpolate(x0, eps, alpha_prev, sigma_prev)``; ``noise`` is needed only when s > 0.
    """
    direction = (sigma_prev**2 - noise_std**2).clamp(min=0).sqrt()
    z = alpha_prev * x0 + direction * eps
    if noise is None:
        if bool((noise_std > 0).any()):
            raise ValueError("`noise` is required for a stochastic DDIM step (`noise_std` > 0)")
        return z
    return z + noise_std * noise


def x0_eps_from_output(
    prediction_type: str, z_t: torch.Tensor, output: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from the network ``output`` at z_t = alpha x0 + sigma eps.

    ``"epsilon"``: eps = output, x0 = (z_t - sigma eps) / alpha.
    ``"flow"``:    v = output,   x0 = z_t - sigma v,  eps = z_t + (1 - sigma) v  (alpha = 1 - sigma).
    """
    if check_prediction_type(prediction_type) == "epsilon":
        return (z_t - sigma * output) / alpha, output
    return x0_from_velocity(z_t, output, sigma), eps_from_velocity(z_t, output, sigma)


def training_target(prediction_type: str, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output at z_t = alpha x0 + sigma eps: ``"epsilon"``: eps;
    ``"flow"``: the velocity v = eps - x0 (the targets of Diffusion-DPO and Flow-DPO, of eps and flow matching)."""
    if check_prediction_type(prediction_type) == "epsilon":
        return eps
    return flow_velocity(x0, eps)


def consistency_function(
    prediction_type: str,
    z_t: torch.Tensor,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """The student's consistency function f(z_t, t) from its x0 prediction.

    ``"epsilon"``: LCM's f = c_skip(t) z_t + c_out(t) x0 (``boundary.consistency_output``), which
    makes f(z, 0) = z although x0 from eps does not reach z at t = 0.
    ``"flow"``: f = x0 = z_t - sigma v, which equals z_t at sigma = 0 by itself; it is also what
    diffusers' ``FlowMatchLCMScheduler`` denoises with, so an exported flow student samples the
    same in stock diffusers (LCM's scalings would differ from it by c_skip(T sigma) (z_t - x0),
    up to 2.5e-3 relative at sigma = 1/T with the default scaling 10).
    """
    if check_prediction_type(prediction_type) == "epsilon":
        return consistency_output(z_t, x0, timesteps, sigma_data, timestep_scaling)
    return x0
