"""Contract tests over the whole reward registry, each reward built from tiny checkpoints saved in
its real checkpoint format (rewards/testing.py)."""

import pytest
import torch

from rewards import VideoReward, build_reward, list_rewards, register_reward
from rewards.testing import SHIPPED_ASSET_REWARDS, rewards_without_tiny_builder, tiny_reward_kwargs

FRAME_LEVEL = ["aesthetic", "clip", "hpsv2", "hpsv2.1", "object-removal", "open_clip", "pickscore"]
CLIP_LEVEL = ["action-classification", "internvideo2", "preference-model", "videoreward", "viclip", "xclip"]
TEXT_INDEPENDENT = {"aesthetic", "object-removal"}


@pytest.fixture(scope="module")
def tiny_rewards(tmp_path_factory):
    """Build each reward once per module: from its tiny checkpoints, or with no arguments when its
    defaults load shipped assets. A registered reward with neither fails the tests that use it."""
    built = {}

    def get(name):
        if name not in built:
            try:
                kwargs = tiny_reward_kwargs(name, tmp_path_factory.mktemp(name))
            except KeyError as err:
                pytest.fail(str(err.args[0]))
            built[name] = build_reward(name, **kwargs)
        return built[name]

    return get


def video(batch=2, frames=8, height=40, width=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 1.8 - 0.9


def test_frame_and_clip_level_rewards_registered(tiny_rewards):
    assert set(FRAME_LEVEL + CLIP_LEVEL) <= set(list_rewards())
    assert list_rewards() == sorted(list_rewards())
    assert {name: tiny_rewards(name).granularity for name in FRAME_LEVEL + CLIP_LEVEL} == {
        **{name: "frame" for name in FRAME_LEVEL}, **{name: "clip" for name in CLIP_LEVEL}}


def test_every_registered_reward_has_a_tiny_builder():
    missing = rewards_without_tiny_builder(list_rewards())
    assert not missing, (
        f"registered rewards without a tiny builder: {missing}; add them to rewards.testing.TINY_REWARD_KWARGS "
        "(or to SHIPPED_ASSET_REWARDS if their defaults load shipped assets)"
    )


def test_rewards_without_tiny_builder_are_named():
    names = ["hpsv2.1", "xclip", "my-new-reward", *SHIPPED_ASSET_REWARDS]
    assert rewards_without_tiny_builder(names) == ["my-new-reward"]
    with pytest.raises(KeyError, match="'my-new-reward' has no tiny builder.*TINY_REWARD_KWARGS"):
        tiny_reward_kwargs("my-new-reward", "unused")
    assert all(tiny_reward_kwargs(name, "unused") == {} for name in SHIPPED_ASSET_REWARDS)


def test_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="unknown reward 'hps'.*hpsv2.1"):
        build_reward("hps")
    with pytest.raises(ValueError, match="registered twice"):
        register_reward("hpsv2.1")(lambda: None)


@pytest.mark.parametrize("name", list_rewards())
def test_scores_batch_with_gradient_on_pixels(name, tiny_rewards):
    reward = tiny_rewards(name)
    assert isinstance(reward, VideoReward)
    pixels = video().requires_grad_(True)
    scores = reward(pixels, ["a red ball", "a dog running on grass"], torch.Generator().manual_seed(0))
    assert scores.shape == (2,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_rewards())
def test_frozen_in_eval_mode(name, tiny_rewards):
    reward = tiny_rewards(name)
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    assert not any(p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize("name", list_rewards())
def test_score_on_selected_frames_equals_forward(name, tiny_rewards):
    """A trainer decodes only ``frame_indices`` and calls ``score``; that equals ``forward``."""
    reward = tiny_rewards(name)
    clip, prompts = video(frames=16), ["a cat", "a car"]
    idx = reward.frame_indices(16, torch.Generator().manual_seed(3))
    assert idx == sorted(set(idx)) and all(0 <= i < 16 for i in idx)
    weights = reward.frame_weights(idx, 16)
    kwargs = {} if weights is None else {"frame_weights": weights}
    direct = reward.score(clip[:, :, idx], prompts, **kwargs)
    torch.testing.assert_close(reward(clip, prompts, torch.Generator().manual_seed(3)), direct)


@pytest.mark.parametrize("name", list_rewards())
def test_scores_depend_on_prompt_and_pixels(name, tiny_rewards):
    reward = tiny_rewards(name)
    clip = video(batch=1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = reward(clip, ["a red ball"], g())
    other_prompt = reward(clip, ["an astronaut riding a horse on the moon"], g())
    other_video = reward(video(batch=1, seed=1), ["a red ball"], g())
    assert not torch.allclose(base, other_video)
    if name in TEXT_INDEPENDENT:
        torch.testing.assert_close(base, other_prompt)
    else:
        assert not torch.allclose(base, other_prompt)


def test_bad_input_shapes(tiny_rewards):
    reward = tiny_rewards("hpsv2.1")
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        reward(torch.zeros(2, 3, 32, 32), ["a", "b"])
    with pytest.raises(ValueError, match="1 prompts for a batch of 2"):
        reward(video(), ["a"])
