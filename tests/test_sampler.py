"""T2VTurboScheduler and DDIMCFGScheduler against golden timesteps and diffusers' schedulers."""

import pytest
import torch

from t2v_turbo.sampler import DDIMCFGScheduler, T2VTurboScheduler, T2VTurboSchedulerOutput


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
        original_inference_steps=50, timestep_scaling=10.0, clip_sample=False, prediction_type="epsilon",
    )


def fake_eps(z, t):
    """A deterministic stand-in for a UNet: depends on the sample and the timestep."""
    return torch.tanh(z * (1 + t / 1000.0)) * 0.9


@pytest.mark.parametrize(
    "spacing, steps, expected",
    [
        ("t2v_turbo", 4, [999, 759, 519, 279]),
        ("t2v_turbo", 8, [999, 879, 759, 639, 519, 399, 279, 159]),
        ("t2v_turbo", 2, [999, 499]),
        ("lcm", 4, [999, 759, 499, 259]),
    ],
)
def test_golden_timesteps(spacing, steps, expected):
    scheduler = T2VTurboScheduler(spacing=spacing)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == expected


def test_explicit_timesteps_and_their_checks():
    scheduler = T2VTurboScheduler()
    with pytest.warns(UserWarning, match=r"\[500\] are not on the 50-point DDIM grid"):
        scheduler.set_timesteps(timesteps=[999, 500])
    assert scheduler.timesteps.tolist() == [999, 500]
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[259, 999])
    with pytest.raises(ValueError, match="exactly one"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="`spacing`='karras'"):
        T2VTurboScheduler(spacing="karras")


def test_step_requires_set_timesteps_and_a_scheduled_timestep():
    scheduler = T2VTurboScheduler()
    z = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="run `set_timesteps"):
        scheduler.step(z, 999, z)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="`timestep`=500 is not one of the scheduled timesteps"):
        scheduler.step(z, 500, z)


@pytest.mark.parametrize("spacing", ["lcm", "t2v_turbo"])
def test_sampling_loop_equals_diffusers_lcm_scheduler(spacing):
    ours = T2VTurboScheduler(spacing=spacing)
    ours.set_timesteps(4)
    reference = lcm_scheduler()
    # diffusers' LCMScheduler takes T2V-Turbo's spacing as explicit timesteps
    reference.set_timesteps(timesteps=ours.timesteps.tolist()) if spacing == "t2v_turbo" else reference.set_timesteps(4)
    assert reference.timesteps.tolist() == ours.timesteps.tolist()
    z_ours = z_ref = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    g_ours, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ours.timesteps:
        out = ours.step(fake_eps(z_ours, int(t)), t, z_ours, generator=g_ours)
        ref = reference.step(fake_eps(z_ref, int(t)), t, z_ref, generator=g_ref)
        # our alpha_bar is computed in float64 then rounded, diffusers' in float32
        torch.testing.assert_close(out.denoised, ref.denoised, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.prev_sample, ref.prev_sample, atol=1e-5, rtol=1e-5)
        z_ours, z_ref = out.prev_sample, ref.prev_sample
    assert torch.equal(g_ours.get_state(), g_ref.get_state())


def test_noise_is_drawn_only_before_non_final_steps():
    scheduler = T2VTurboScheduler()
    scheduler.set_timesteps(4)
    z = torch.randn(2, 4, 3, 3)
    g, counter = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t in scheduler.timesteps:
        out = scheduler.step(fake_eps(z, int(t)), t, z, generator=g)
        z = out.prev_sample
    for _ in range(3):
        torch.randn(z.shape, generator=counter)
    assert torch.equal(g.get_state(), counter.get_state())
    assert torch.equal(out.prev_sample, out.denoised)


def test_output_dataclass_tuple_and_config_round_trip(tmp_path):
    scheduler = T2VTurboScheduler(num_ddim_timesteps=25, sigma_data=0.4, timestep_scaling=5.0, spacing="lcm")
    scheduler.save_config(tmp_path)
    restored = T2VTurboScheduler.from_pretrained(tmp_path)
    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(restored.config) == public(scheduler.config)
    for s in (scheduler, restored):
        s.set_timesteps(4)
    z = torch.randn(1, 4, 2, 2)
    a = scheduler.step(fake_eps(z, 999), 999, z, generator=torch.Generator().manual_seed(0))
    b = restored.step(fake_eps(z, 999), 999, z, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(a, T2VTurboSchedulerOutput)
    assert torch.equal(a.prev_sample, b[0]) and torch.equal(a.denoised, b[1])


def test_explicit_alphas_cumprod_override_the_betas():
    values = torch.linspace(0.999, 0.01, 1000)
    scheduler = T2VTurboScheduler(alphas_cumprod=values.tolist())
    assert torch.equal(scheduler.alphas_cumprod, values)
    with pytest.raises(ValueError, match="`alphas_cumprod` has 10 values"):
        T2VTurboScheduler(alphas_cumprod=[0.5] * 10)


def test_ddim_cfg_loop_equals_diffusers_ddim():
    from diffusers import DDIMScheduler

    ours = DDIMCFGScheduler(steps_offset=1)
    reference = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        set_alpha_to_one=False, steps_offset=1, clip_sample=False,
    )
    ours.set_timesteps(50)
    reference.set_timesteps(50)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    assert ours.timesteps[:2].tolist() == [981, 961] and ours.timesteps[-1].item() == 1
    z_ours = z_ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        z_ours = ours.step(fake_eps(z_ours, int(t)), t, z_ours).prev_sample
        z_ref = reference.step(fake_eps(z_ref, int(t)), t, z_ref, eta=0.0).prev_sample
    torch.testing.assert_close(z_ours, z_ref, atol=1e-4, rtol=1e-4)


def test_t2v_turbo_scheduler_is_lcm_scheduler_step_on_the_trainers_schedule():
    """The step is LCMScheduler's; what differs is the schedule: LCMScheduler's float32 cumulative
    product is off the trainer's float64-computed alpha_bar in 986 of 1000 entries (up to 4.8e-7)."""
    from diffusers import LCMScheduler

    from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod

    trainer = scaled_linear_alphas_cumprod()
    ours, reference = T2VTurboScheduler(spacing="lcm"), lcm_scheduler()
    assert isinstance(ours, LCMScheduler) and torch.equal(ours.alphas_cumprod, trainer)
    difference = (reference.alphas_cumprod - trainer).abs()
    assert int((difference > 0).sum()) > 900 and 1e-7 < float(difference.max()) < 1e-6
    # LCMScheduler on the trainer's table steps exactly as ours
    reference.alphas_cumprod = trainer.clone()
    ours.set_timesteps(4)
    reference.set_timesteps(4)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z_ours, z_ref = z, z
    g_ours, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ours.timesteps:
        out = ours.step(fake_eps(z_ours, int(t)), t, z_ours, generator=g_ours)
        ref = reference.step(fake_eps(z_ref, int(t)), t, z_ref, generator=g_ref)
        assert torch.equal(out.prev_sample, ref.prev_sample) and torch.equal(out.denoised, ref.denoised)
        z_ours, z_ref = out.prev_sample, ref.prev_sample


def test_sigma_data_is_configurable_where_lcm_scheduler_hard_codes_it():
    ours, reference = T2VTurboScheduler(sigma_data=0.25), lcm_scheduler()
    c_skip, c_out = ours.get_scalings_for_boundary_condition_discrete(torch.tensor(20))
    # c_skip = s^2 / ((10 t)^2 + s^2) with s = 0.25 and t = 20
    assert abs(float(c_skip) - 0.0625 / (200.0**2 + 0.0625)) < 1e-12
    assert abs(float(c_out) - 200.0 / (200.0**2 + 0.0625) ** 0.5) < 1e-7
    lcm_skip, _ = reference.get_scalings_for_boundary_condition_discrete(torch.tensor(20))
    assert abs(float(lcm_skip) - 0.25 / (200.0**2 + 0.25)) < 1e-12  # 0.5 whatever is configured


def test_ddim_cfg_scheduler_is_ddim_scheduler_on_the_trainers_schedule():
    from diffusers import DDIMScheduler

    from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod

    ours = DDIMCFGScheduler(steps_offset=1)
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    assert isinstance(ours, DDIMScheduler) and torch.equal(ours.alphas_cumprod, scaled_linear_alphas_cumprod())
    assert not torch.equal(reference.alphas_cumprod, ours.alphas_cumprod)
    reference.alphas_cumprod = ours.alphas_cumprod.clone()
    reference.final_alpha_cumprod = ours.final_alpha_cumprod
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    z_ours = z_ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        z_ours = ours.step(fake_eps(z_ours, int(t)), t, z_ours).prev_sample
        z_ref = reference.step(fake_eps(z_ref, int(t)), t, z_ref).prev_sample
        assert torch.equal(z_ours, z_ref)
