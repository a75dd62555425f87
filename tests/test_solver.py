"""The pure math of distill/: schedules, DDIM solver, boundary scalings, guidance embedding, losses."""

import math

import pytest
import torch

from distill.losses import consistency_distance, l2_loss, pseudo_huber_loss
from t2v_turbo.diffusion.boundary import consistency_output, consistency_scalings
from t2v_turbo.diffusion.schedule import (
    ddim_timesteps,
    multistep_timesteps,
    previous_timestep,
    scaled_linear_alphas_cumprod,
)
from t2v_turbo.diffusion.solver import (
    add_noise,
    cfg_lcm_form,
    ddim_solver_step,
    eps_from_x0,
    extract,
    guidance_scale_embedding,
    x0_from_eps,
)


def test_scaled_linear_schedule_matches_the_formula():
    abar = scaled_linear_alphas_cumprod()
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert abar.dtype == torch.float32 and abar.shape == (1000,)
    assert abar[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert abar[999].item() == pytest.approx(torch.prod(1 - betas).item(), rel=1e-5)
    assert abar[999].item() == pytest.approx(0.00466, abs=1e-5)


def test_ddim_grid_and_previous_timestep():
    grid = ddim_timesteps(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1].item() == 999 and len(grid) == 50
    assert ddim_timesteps(1000, 200)[:2].tolist() == [4, 9]
    assert previous_timestep(torch.tensor([999, 19, 5]), 20).tolist() == [979, 0, 0]
    with pytest.raises(ValueError, match="`num_ddim_timesteps`=30"):
        ddim_timesteps(1000, 30)


@pytest.mark.parametrize(
    "steps, expected",
    [
        (4, [999, 759, 519, 279]),
        (8, [999, 879, 759, 639, 519, 399, 279, 159]),
        (2, [999, 499]),
        (1, [999]),
    ],
)
def test_t2v_turbo_spacing(steps, expected):
    assert multistep_timesteps(steps) == expected


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8, 16, 50])
def test_lcm_spacing_equals_diffusers_lcm_scheduler(steps):
    from diffusers import LCMScheduler

    scheduler = LCMScheduler(beta_schedule="scaled_linear", original_inference_steps=50)
    scheduler.set_timesteps(steps)
    assert multistep_timesteps(steps, spacing="lcm") == scheduler.timesteps.tolist()
    if steps == 4:
        assert scheduler.timesteps.tolist() == [999, 759, 499, 259]


def test_bad_spacing_arguments_are_named():
    with pytest.raises(ValueError, match="`num_inference_steps`=51"):
        multistep_timesteps(51)
    with pytest.raises(ValueError, match=r"`num_inference_steps`=0 must be in \[1, 50\]"):
        multistep_timesteps(0)
    with pytest.raises(ValueError, match="`spacing`='karras'"):
        multistep_timesteps(4, spacing="karras")


def test_ddim_solver_step_equals_diffusers_ddim_step():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        set_alpha_to_one=False, timestep_spacing="trailing", clip_sample=False,
    )
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[:2].tolist() == [999, 979] and scheduler.timesteps[-1].item() == 19
    g = torch.Generator().manual_seed(0)
    abar = scheduler.alphas_cumprod
    for t in [999, 519, 39, 19]:
        z = torch.randn(2, 4, 3, 8, 8, generator=g)
        eps = torch.randn(z.shape, generator=g)
        expected = scheduler.step(eps, t, z, eta=0.0).prev_sample
        t_prev = previous_timestep(torch.tensor([t, t]), 20)
        # the solver's target t_n = t_{n+k} - k, with alpha_bar[0] below the grid (spec section 2)
        abar_prev = extract(abar, t_prev, z.ndim)
        x0 = x0_from_eps(z, eps, extract(abar, torch.tensor([t, t]), z.ndim))
        torch.testing.assert_close(ddim_solver_step(x0, eps, abar_prev), expected, atol=1e-5, rtol=1e-5)


def test_noise_and_conversions_invert_each_other():
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    abar = extract(scaled_linear_alphas_cumprod(), torch.tensor([0, 500, 999]), 2)
    z_t = add_noise(z0, eps, abar)
    torch.testing.assert_close(x0_from_eps(z_t, eps, abar), z0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_from_x0(z_t, z0, abar), eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t", [0, 19, 999])
def test_boundary_scalings_against_formula_and_lcm_scheduler(t):
    from diffusers import LCMScheduler

    c_skip, c_out = consistency_scalings(torch.tensor([t]), sigma_data=0.5, timestep_scaling=10.0)
    s, a = 0.5, 10.0 * t
    assert c_skip.item() == pytest.approx(s**2 / (a**2 + s**2), rel=1e-6)
    assert c_out.item() == pytest.approx(a / math.sqrt(a**2 + s**2), rel=1e-6, abs=1e-12)
    lcm_skip, lcm_out = LCMScheduler(timestep_scaling=10.0).get_scalings_for_boundary_condition_discrete(t)
    assert c_skip.item() == pytest.approx(float(lcm_skip), rel=1e-6)
    assert c_out.item() == pytest.approx(float(lcm_out), rel=1e-6, abs=1e-12)
    if t == 0:
        assert (c_skip.item(), c_out.item()) == (1.0, 0.0)


def test_consistency_output_is_identity_at_t0_and_x0_far_away():
    z, x0 = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    f = consistency_output(z, x0, torch.tensor([0, 999]))
    torch.testing.assert_close(f[0], z[0])
    torch.testing.assert_close(f[1], x0[1], atol=1e-6 * 10, rtol=1e-4)
    # in between, the defaults are sigma_data = 0.5 and timestep scaling 10: at t = 1, c_skip = 0.25 / 100.25
    mixed = consistency_output(z, x0, torch.tensor([1, 1]))
    torch.testing.assert_close(mixed, (0.25 * z + 10.0 * math.sqrt(100.25) * x0) / 100.25)


def test_guidance_embedding_shape_values_and_diffusers_equivalence():
    w = torch.tensor([7.5, 0.0, 15.0])
    emb = guidance_scale_embedding(w, 256)
    assert emb.shape == (3, 256)
    # w = 0: sin(0) = 0 on the first half, cos(0) = 1 on the second
    assert torch.equal(emb[1, :128], torch.zeros(128)) and torch.equal(emb[1, 128:], torch.ones(128))
    freq_3 = math.exp(-math.log(10000.0) * 3 / 127)
    assert emb[0, 3].item() == pytest.approx(math.sin(7500.0 * freq_3), abs=1e-4)
    assert emb[0, 128 + 3].item() == pytest.approx(math.cos(7500.0 * freq_3), abs=1e-4)
    assert guidance_scale_embedding(w, 255).shape == (3, 255)
    assert torch.equal(guidance_scale_embedding(w, 255)[:, -1], torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        guidance_scale_embedding(torch.tensor(7.5))
    from diffusers import LatentConsistencyModelPipeline

    reference = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    torch.testing.assert_close(emb, reference, atol=1e-6, rtol=0)


def test_cfg_lcm_form_identity():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    w = torch.tensor([0.0, 7.5]).reshape(2, 1)
    out = cfg_lcm_form(cond, uncond, w)
    torch.testing.assert_close(out, (1 + w) * cond - w * uncond)
    torch.testing.assert_close(out[0], cond[0])
    # the usual CFG scale s = 1 + w: uncond + s (cond - uncond)
    torch.testing.assert_close(out[1], uncond[1] + 8.5 * (cond[1] - uncond[1]))


def test_pseudo_huber_and_l2_values():
    pred, target = torch.full((2, 3), 3.0), torch.zeros(2, 3)
    assert pseudo_huber_loss(pred, target, c=0.001).item() == pytest.approx(math.sqrt(9 + 1e-6) - 0.001, rel=1e-6)
    assert pseudo_huber_loss(target, target).item() == 0.0
    # near zero it is quadratic: d^2 / (2c) for |d| << c
    small = torch.full((4,), 1e-5)
    assert pseudo_huber_loss(small, torch.zeros(4), c=0.001).item() == pytest.approx(1e-10 / 0.002, rel=1e-2)
    assert l2_loss(pred, target).item() == pytest.approx(9.0)
    assert consistency_distance(pred, target, "l2").item() == pytest.approx(9.0)
    with pytest.raises(ValueError, match="`loss_type`='l1'"):
        consistency_distance(pred, target, "l1")
