"""Reward guidance at sampling time (t2v_turbo/pipeline.py: reward_guided_output, the pipelines' reward_guidance;
t2v-turbo sample --reward-guidance), on tiny epsilon and flow teachers."""

import pytest
import torch

from rewards.testing import save_tiny_preference_model
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.adapters.wan import WanAdapter
from t2v_turbo.cli import main
from t2v_turbo.pipeline import T2VTurboPipeline, TeacherPipeline, reward_guided_output, sampler_noise_level
from t2v_turbo.student import build_student
from t2v_turbo.testing import build_tiny_diffusers_t2v, build_tiny_wan


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("guidance")
    return {"epsilon": build_tiny_diffusers_t2v(root / "teacher"), "flow": build_tiny_wan(root / "wan")}


def adapter_of(teachers, kind):
    if kind == "epsilon":
        return DiffusersT2VAdapter.from_pretrained(teachers["epsilon"]).freeze()
    return WanAdapter.from_pretrained(teachers["flow"], num_frames=5, height=16, width=16).freeze()


def test_guided_output_is_the_output_minus_w_times_the_reward_gradient():
    z = torch.randn(2, 4, 3, 8, 8)
    output = torch.randn_like(z)
    c = torch.tensor([0.5, -2.0])

    def reward(latents, t):  # r = c_b sum(z^2): gradient 2 c_b z
        return c * (latents**2).flatten(1).sum(1) + 0 * t

    guided = reward_guided_output(output, z, torch.tensor([10, 10]), reward, scale=0.3)
    torch.testing.assert_close(guided, output - 0.3 * 2 * c.view(-1, 1, 1, 1, 1) * z)


def test_noise_levels_of_the_samplers_timesteps(teachers):
    eps_adapter, flow_adapter = adapter_of(teachers, "epsilon"), adapter_of(teachers, "flow")
    t = torch.tensor([999, 259])
    torch.testing.assert_close(sampler_noise_level(eps_adapter, t), (1 - eps_adapter.alphas_cumprod[t]).sqrt())
    torch.testing.assert_close(sampler_noise_level(flow_adapter, torch.tensor([750.0, 30.0])),
                               torch.tensor([0.75, 0.03]))


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("sampler", ["student", "teacher"])
def test_guidance_moves_samples_up_the_reward(teachers, kind, sampler):
    adapter = adapter_of(teachers, kind)
    geometry = {"num_frames": 4, "height": 16, "width": 16} if kind == "epsilon" else {"num_frames": 5, "height": 16,
                                                                                      "width": 16}
    if sampler == "student":
        pipe = T2VTurboPipeline(adapter, build_student(adapter, 256, lora=None).eval())
    else:
        pipe = TeacherPipeline(adapter)
    calls = []

    def brightness(latents, t):  # the mean latent: guidance raises it
        calls.append(t)
        return latents.flatten(1).mean(1)

    def sample(**kwargs):
        return pipe(["a cat running"], num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="latent", **geometry, **kwargs)

    plain = sample()
    torch.testing.assert_close(sample(reward_guidance=brightness, reward_guidance_scale=0.0), plain)
    guided = sample(reward_guidance=brightness, reward_guidance_scale=50.0)
    assert guided.mean() > plain.mean() + 0.05
    assert len(calls) == 3 and all(t.shape == (1,) for t in calls)


def test_sample_command_with_a_latent_reward_model(teachers, tmp_path, capsys):
    model = save_tiny_preference_model(tmp_path / "latent_rm", teachers["epsilon"], space="latents")
    args = ["sample", "--teacher", str(teachers["epsilon"]), "--prompt", "a cat running", "--steps", "3",
            "--num-frames", "4", "--height", "16", "--width", "16"]
    assert main(args + ["--out", str(tmp_path / "plain.mp4")]) == 0
    guided = args + ["--reward-guidance", str(model), "--reward-weights", "TA=1,VQ=0.5", "--reward-scale", "30"]
    assert main(guided + ["--out", str(tmp_path / "guided.mp4")]) == 0
    assert (tmp_path / "plain.mp4").read_bytes() != (tmp_path / "guided.mp4").read_bytes()
    assert main(args + ["--out", str(tmp_path / "x.mp4"), "--reward-guidance", str(model), "--reward-weights",
                        "TA:1"]) == 2
    assert "--reward-weights: 'TA:1' is not DIM=NUMBER" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "y.mp4"), "--reward-guidance", str(tmp_path)]) == 2
    assert "preference_model.json not found" in capsys.readouterr().err
