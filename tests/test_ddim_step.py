"""Stochastic DDIM step and leading timesteps (t2v_turbo.diffusion.prediction / .schedule) against the
formulas written out here and against diffusers' DDIMScheduler with eta > 0."""

import pytest
import torch
from diffusers import DDIMScheduler

from t2v_turbo.diffusion.flow import flow_training_sigmas
from t2v_turbo.diffusion.prediction import (
    ddim_noise_std,
    ddim_step,
    interpolate,
    noise_coefficients,
    previous_coefficients,
    x0_eps_from_output,
)
from t2v_turbo.diffusion.schedule import leading_timesteps, scaled_linear_alphas_cumprod


def test_leading_timesteps_golden():
    assert leading_timesteps(25, 1000, 1)[:3] == [961, 921, 881] and leading_timesteps(25, 1000, 1)[-1] == 1
    assert leading_timesteps(20, 1000, 1) == list(range(951, 0, -50))
    assert leading_timesteps(4, 1000, 0) == [750, 500, 250, 0]
    with pytest.raises(ValueError, match="num_inference_steps"):
        leading_timesteps(0)


def test_noise_std_is_ddim_eq16_for_epsilon_teachers():
    abar = scaled_linear_alphas_cumprod()
    alpha, sigma = noise_coefficients("epsilon", alphas_cumprod=abar)
    t, prev = 961, 921
    expected = 0.7 * ((1 - abar[prev]) / (1 - abar[t])).sqrt() * (1 - abar[t] / abar[prev]).sqrt()
    got = ddim_noise_std(alpha[t], sigma[t], alpha[prev], sigma[prev], 0.7)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ddim_noise_std(alpha[t], sigma[t], alpha[prev], sigma[prev], 0.0).item() == 0.0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_stochastic_ddim_loop_equals_diffusers(eta):
    """25 leading steps with eta, our step vs DDIMScheduler.step(eta, variance_noise) on the same noise."""
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    reference.set_timesteps(25)
    timesteps = leading_timesteps(25, 1000, 1)
    assert reference.timesteps.tolist() == timesteps
    alpha, sigma = noise_coefficients("epsilon", alphas_cumprod=reference.alphas_cumprod.float())
    g = torch.Generator().manual_seed(0)
    z_ours = z_ref = torch.randn(2, 4, 3, 4, 4, generator=g)
    for i, t in enumerate(timesteps):
        eps_ours = torch.tanh(z_ours) * 0.5 + 0.01 * t / 1000  # any smooth stand-in for a network
        eps_ref = torch.tanh(z_ref) * 0.5 + 0.01 * t / 1000
        noise = torch.randn(z_ours.shape, generator=g)
        x0, eps = x0_eps_from_output("epsilon", z_ours, eps_ours, alpha[t], sigma[t])
        a_prev, s_prev = previous_coefficients("epsilon", alpha, sigma, t - 40)
        std = ddim_noise_std(alpha[t], sigma[t], a_prev, s_prev, eta)
        z_ours = ddim_step(x0, eps, a_prev, s_prev, std, noise)
        z_ref = reference.step(eps_ref, t, z_ref, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(z_ours, z_ref, atol=1e-4, rtol=1e-4)


def test_flow_steps_end_at_sigma_zero_and_keep_the_marginal():
    sigmas = flow_training_sigmas(1000, 3.0)
    alpha, sigma = noise_coefficients("flow", sigmas=sigmas)
    a_end, s_end = previous_coefficients("flow", alpha, sigma, -1)
    assert a_end.item() == 1.0 and s_end.item() == 0.0
    # at sigma_prev = 0 no noise is added whatever eta: the step returns x0
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    std = ddim_noise_std(alpha[10], sigma[10], a_end, s_end, 1.0)
    assert std.item() == 0.0
    assert torch.equal(ddim_step(x0, eps, a_end, s_end, std, torch.randn(2, 3)), x0)
    # deterministic step = interpolate; the stochastic one keeps variance sigma_prev^2 of the noise part
    t, prev = 900, 500
    std = ddim_noise_std(alpha[t], sigma[t], alpha[prev], sigma[prev], 1.0)
    assert 0 < std.item() < sigma[prev].item()
    assert torch.equal(ddim_step(x0, eps, alpha[prev], sigma[prev], torch.zeros(())),
                       interpolate(x0, eps, alpha[prev], sigma[prev]))
    direction = (sigma[prev] ** 2 - std**2).sqrt()
    assert (direction**2 + std**2).item() == pytest.approx(sigma[prev].item() ** 2, rel=1e-5)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x0, eps, alpha[prev], sigma[prev], std)
