"""Rectified-flow math (t2v_turbo.diffusion.flow, .prediction) against the formulas written out here
and against diffusers' FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler (flow) and
FlowMatchLCMScheduler on the same inputs."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler, UniPCMultistepScheduler

from t2v_turbo.diffusion.flow import (
    eps_from_velocity,
    flow_add_noise,
    flow_euler_step,
    flow_model_timesteps,
    flow_training_sigmas,
    flow_velocity,
    shift_sigmas,
    x0_from_velocity,
)
from t2v_turbo.diffusion.prediction import (
    consistency_function,
    interpolate,
    noise_coefficients,
    x0_eps_from_output,
)
from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod
from t2v_turbo.diffusion.solver import cfg_lcm_form


def _tensors(seed=0, shape=(2, 4, 3, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_shift_sigmas_formula_and_fixed_points():
    sigmas = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    # s sigma / (1 + (s - 1) sigma) with s = 3: 0, 0.75/1.5, 1.5/2, 1
    assert torch.allclose(shift_sigmas(sigmas, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert torch.equal(shift_sigmas(sigmas, 1.0), sigmas)
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(sigmas, 0.0)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_training_sigmas_equal_flow_match_euler_grid(shift):
    ours = flow_training_sigmas(1000, shift)
    diffusers = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    assert ours.shape == (1000,) and ours[-1] == 1.0
    assert torch.all(ours[1:] > ours[:-1])
    # diffusers lists them high to low; index i of ours is its entry T - 1 - i
    torch.testing.assert_close(ours, diffusers.sigmas[:1000].flip(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow_model_timesteps(ours), diffusers.timesteps.flip(0), atol=1e-3, rtol=0)


def test_conversions_round_trip_against_formulas():
    x0, eps = _tensors()
    sigma = torch.tensor([0.3, 0.9]).view(2, 1, 1, 1, 1)
    x_t = (1 - sigma) * x0 + sigma * eps
    assert torch.allclose(flow_add_noise(x0, eps, sigma), x_t)
    v = flow_velocity(x0, eps)
    assert torch.equal(v, eps - x0)
    torch.testing.assert_close(x0_from_velocity(x_t, v, sigma), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_from_velocity(x_t, v, sigma), eps, atol=1e-5, rtol=0)


def test_add_noise_equals_flow_match_scale_noise():
    x0, eps = _tensors(1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    index = 700
    timestep = scheduler.timesteps[999 - index].expand(2)
    expected = scheduler.scale_noise(x0, timestep, eps)
    sigma = flow_training_sigmas(1000, 3.0)[index]
    torch.testing.assert_close(flow_add_noise(x0, eps, sigma), expected, atol=1e-5, rtol=0)


def test_euler_step_is_ddim_in_flow_variables_and_equals_flow_match_euler_step():
    _, eps = _tensors(2)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(4)
    sample = eps.clone()
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(sample.shape, generator=torch.Generator().manual_seed(10 + i))
        sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        ours = flow_euler_step(sample, v, sigma, sigma_next)
        # (1 - sigma') x0 + sigma' eps with x0 = x - sigma v, eps = x + (1 - sigma) v
        ddim = (1 - sigma_next) * (sample - sigma * v) + sigma_next * (sample + (1 - sigma) * v)
        torch.testing.assert_close(ours, ddim, atol=1e-5, rtol=0)
        sample_next = scheduler.step(v, t, sample).prev_sample
        torch.testing.assert_close(ours, sample_next, atol=1e-6, rtol=0)
        sample = sample_next


def _wan_unipc(shift=3.0):
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        solver_order=2, beta_schedule="linear",
    )


def test_unipc_flow_sigmas_are_the_shifted_schedule():
    scheduler = _wan_unipc(3.0)
    scheduler.set_timesteps(10)
    unshifted = torch.linspace(1, 1 / 1000, 11, dtype=torch.float64)[:-1]
    expected = shift_sigmas(unshifted, 3.0)
    expected[0] -= 1e-6  # diffusers keeps sigma_0 below 1 so that log(alpha) stays finite
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), expected, atol=1e-6, rtol=0)
    assert scheduler.sigmas[-1] == 0
    # UniPC hands the transformer T sigma truncated to an integer
    assert torch.equal(scheduler.timesteps, flow_model_timesteps(expected).long())


def test_unipc_flow_x0_and_first_step_equal_ours():
    """UniPC's data prediction is x0 = x - sigma v, and its first step (order 1, no corrector yet)
    is the DDIM / Euler step of the flow ODE."""
    x0, eps = _tensors(3)
    scheduler = _wan_unipc(5.0)
    scheduler.set_timesteps(8)
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    sample = flow_add_noise(x0, eps, sigma)
    v = torch.randn(sample.shape, generator=torch.Generator().manual_seed(4))
    stepped = scheduler.step(v, scheduler.timesteps[0], sample).prev_sample
    # the step keeps its data prediction of the model output for the next (multistep) update
    torch.testing.assert_close(scheduler.model_outputs[-1], x0_from_velocity(sample, v, sigma))
    torch.testing.assert_close(stepped, flow_euler_step(sample, v, sigma, sigma_next), atol=1e-5, rtol=1e-5)


def test_cfg_lcm_form_on_velocity_equals_pipeline_guidance_and_commutes_with_conversions():
    v_c, v_u = _tensors(5)
    x_t, _ = _tensors(6)
    sigma = torch.tensor(0.6)
    g = 5.0  # WanPipeline: v_u + g (v_c - v_u); LCM form uses w = g - 1
    guided = v_u + g * (v_c - v_u)
    torch.testing.assert_close(cfg_lcm_form(v_c, v_u, g - 1), guided)
    # guidance on (x0, eps) of each branch = (x0, eps) of the guided velocity
    alpha, sig = 1 - sigma, sigma
    x0_c, eps_c = x0_eps_from_output("flow", x_t, v_c, alpha, sig)
    x0_u, eps_u = x0_eps_from_output("flow", x_t, v_u, alpha, sig)
    x0_g, eps_g = x0_eps_from_output("flow", x_t, guided, alpha, sig)
    torch.testing.assert_close(cfg_lcm_form(x0_c, x0_u, g - 1), x0_g, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cfg_lcm_form(eps_c, eps_u, g - 1), eps_g, atol=1e-5, rtol=1e-5)


def test_noise_coefficients_and_conversions_per_prediction_type():
    abar = scaled_linear_alphas_cumprod()
    alpha, sigma = noise_coefficients("epsilon", alphas_cumprod=abar)
    assert torch.equal(alpha, abar.sqrt()) and torch.equal(sigma, (1 - abar).sqrt())
    flow_sigmas = flow_training_sigmas(1000, 3.0)
    alpha_f, sigma_f = noise_coefficients("flow", sigmas=flow_sigmas)
    assert torch.equal(alpha_f, 1 - flow_sigmas) and torch.equal(sigma_f, flow_sigmas)
    with pytest.raises(ValueError, match="prediction_type"):
        noise_coefficients("v_prediction", alphas_cumprod=abar)
    with pytest.raises(ValueError, match="sigmas"):
        noise_coefficients("flow", alphas_cumprod=abar)

    x0, eps = _tensors(7)
    for kind, a, s, output in (
        ("epsilon", alpha[400], sigma[400], eps),
        ("flow", alpha_f[400], sigma_f[400], eps - x0),
    ):
        z = interpolate(x0, eps, a, s)
        torch.testing.assert_close(z, a * x0 + s * eps)
        x0_hat, eps_hat = x0_eps_from_output(kind, z, output, a, s)
        torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_consistency_function_boundary_per_prediction_type():
    z, x0 = _tensors(8)
    t = torch.tensor([0, 500])
    # epsilon: LCM scalings, c_skip(0) = 1, c_out(0) = 0 -> f(z, 0) = z
    f = consistency_function("epsilon", z, x0, t)
    torch.testing.assert_close(f[0], z[0])
    c_skip = 0.25 / (5000.0**2 + 0.25)
    c_out = 5000.0 / (5000.0**2 + 0.25) ** 0.5
    torch.testing.assert_close(f[1], c_skip * z[1] + c_out * x0[1])
    # flow: f = x0 = z - sigma v, which is z at sigma = 0
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    at_zero = x0_from_velocity(z, v, torch.tensor(0.0))
    assert torch.equal(consistency_function("flow", z, at_zero, t), z)


def test_flow_match_lcm_step_denoises_with_our_consistency_function():
    """diffusers' FlowMatchLCMScheduler.step = (1 - sigma') f + sigma' noise with f = x - sigma v."""
    x, v = _tensors(10)
    scheduler = FlowMatchLCMScheduler(num_train_timesteps=1000, shift=3.0)
    unshifted = [1.0, 0.76, 0.52, 0.28]  # set_timesteps shifts the sigmas it is given
    scheduler.set_timesteps(sigmas=unshifted)
    expected_sigmas = shift_sigmas(torch.tensor(unshifted, dtype=torch.float64), 3.0).float()
    torch.testing.assert_close(scheduler.sigmas[:-1], expected_sigmas)
    torch.manual_seed(123)
    out = scheduler.step(v, scheduler.timesteps[1], x).prev_sample
    torch.manual_seed(123)
    noise = torch.randn(x.shape)
    sigma, sigma_next = scheduler.sigmas[1], scheduler.sigmas[2]
    f = consistency_function("flow", x, x0_from_velocity(x, v, sigma), None)
    torch.testing.assert_close(out, interpolate(f, noise, 1 - sigma_next, sigma_next), atol=1e-6, rtol=0)
