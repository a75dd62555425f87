"""The small preference reward model (rewards/preference_model.py) on pixels and on noisy latents: its
conditioning, the shared noise of a latent pair, saving and loading, and the reward-guidance closure."""

import pytest
import torch

from rewards import build_reward
from rewards.preference_model import PreferenceRewardModel, load_preference_model, noise_level_embedding
from rewards.testing import save_tiny_preference_model
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.testing import build_tiny_diffusers_t2v


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher") / "teacher")
    return folder, DiffusersT2VAdapter.from_pretrained(folder).freeze()


def test_pixel_scores_depend_on_prompt_and_motion_and_reach_the_pixels(teacher):
    _, adapter = teacher
    model = PreferenceRewardModel(adapter, width=8, depth=3, seed=1)
    video = (torch.rand(2, 3, 6, 24, 24) * 2 - 1).requires_grad_(True)
    scores = model(video, ["a cat running", "a dog on the beach"])
    assert scores.shape == (2, 3)
    other_prompt = model(video, ["a red car on the street", "a dog on the beach"])
    assert not torch.allclose(scores[0], other_prompt[0]) and torch.allclose(scores[1], other_prompt[1])
    reversed_time = model(video.flip(2), ["a cat running", "a dog on the beach"])
    assert not torch.allclose(scores, reversed_time)
    scores.sum().backward()
    assert video.grad.abs().sum() > 0


def test_latent_pairs_share_t_and_eps_drawn_from_the_pair_generator(teacher):
    _, adapter = teacher
    model = PreferenceRewardModel(adapter, space="latents", width=8, depth=2)
    a, b = torch.rand(2, 3, 4, 16, 16) * 2 - 1, torch.rand(2, 3, 4, 16, 16) * 2 - 1
    prompts = ["a cat running", "a dog on the beach"]
    r_a, r_b = model.score_pair(a, b, prompts, 8.0, [torch.Generator().manual_seed(s) for s in (3, 4)])
    # written out: t, the two posterior samples, then eps, from each pair's generator in that order
    alpha, sigma = adapter.noise_coefficients()
    noisy_a, noisy_b, levels = [], [], []
    for i, seed in enumerate((3, 4)):
        g = torch.Generator().manual_seed(seed)
        t = int(torch.randint(0, 1000, (), generator=g))
        x_a = adapter.encode_video(a[i: i + 1], generator=g)
        x_b = adapter.encode_video(b[i: i + 1], generator=g)
        eps = torch.randn(x_a.shape, generator=g)
        noisy_a.append(alpha[t] * x_a + sigma[t] * eps)
        noisy_b.append(alpha[t] * x_b + sigma[t] * eps)
        levels.append(sigma[t])
    levels = torch.stack(levels)
    torch.testing.assert_close(r_a, model(torch.cat(noisy_a), prompts, levels))
    torch.testing.assert_close(r_b, model(torch.cat(noisy_b), prompts, levels))
    with pytest.raises(ValueError, match="needs the noise level"):
        model(torch.cat(noisy_a), prompts)


def test_noise_level_embedding():
    sigma = torch.tensor([0.0, 0.5])
    emb = noise_level_embedding(sigma, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([(500 * freqs).sin(), (500 * freqs).cos()]))
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]))


def test_guidance_is_the_weighted_sum_and_differentiable_in_z(teacher):
    _, adapter = teacher
    model = PreferenceRewardModel(adapter, space="latents", width=8, depth=2)
    z = torch.randn(2, 4, 4, 8, 8, requires_grad=True)
    t = torch.tensor([999, 259])
    sigma_of = lambda steps: adapter.noise_coefficients()[1][steps]  # noqa: E731
    reward = model.guidance(["a cat running"] * 2, {"TA": 2.0, "VQ": 0.5}, sigma_of)
    scores = model(z, ["a cat running"] * 2, sigma_of(t))
    torch.testing.assert_close(reward(z, t), 0.5 * scores[:, 0] + 2.0 * scores[:, 2])
    (grad,) = torch.autograd.grad(reward(z, t).sum(), z)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"dimensions \['AQ'\]"):
        model.guidance(["a"], {"AQ": 1.0}, sigma_of)
    with pytest.raises(ValueError, match="noisy latents"):
        PreferenceRewardModel(adapter, width=8, depth=2).guidance(["a"], {"TA": 1.0}, sigma_of)


def test_save_load_round_trip_and_registry_reward(teacher, tmp_path):
    folder, adapter = teacher
    saved = save_tiny_preference_model(tmp_path / "model", folder, seed=5)
    model, config = load_preference_model(saved)
    reference = PreferenceRewardModel(adapter, width=8, depth=2, seed=5)
    for key, value in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert config["teacher_adapter"] == "t2v_turbo.adapters.diffusers_t2v.DiffusersT2VAdapter"
    reward = build_reward("preference-model", checkpoint=saved, weights={"MQ": 1.0})
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert reward.frame_indices(5) == [0, 1, 2, 3, 4]
    raw = model(video, ["a cat"])
    torch.testing.assert_close(reward(video, ["a cat"]), (raw[:, 1] + 0.2) / 0.5)
    latent = save_tiny_preference_model(tmp_path / "latent", folder, space="latents")
    with pytest.raises(ValueError, match="noisy latents scores no decoded videos"):
        build_reward("preference-model", checkpoint=latent)
    with pytest.raises(FileNotFoundError, match="preference_model.json not found"):
        load_preference_model(tmp_path)
