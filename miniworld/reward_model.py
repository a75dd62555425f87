"""The mini world's multi-dimensional reward models, trained by the reward-model recipe on the world's
ground-truth preference pairs (``miniworld.preferences``):

- ``preference_model``: a small convolutional model on decoded videos (or on noisy latents, for reward
  guidance), conditioned on the shipped teacher's text encoding (``configs/miniworld_reward_model.yaml``);
- ``videoreward_model``: VideoReward's own architecture at a tiny size, from scratch: a Qwen2-VL of
  ``hidden_size`` over a word tokenizer of the world's vocabulary (written once as a base folder: config +
  tokenizer, ``rewards.testing.save_tiny_qwen2_vl``), one reward token per dimension and a short prompt
  template. Each 32x32 frame becomes 56x56 (4 x 4 patches of 14, 4 merged tokens); frames are taken at
  ``sample_fps`` of the world's 8. On 2 CPU cores it learns text alignment but, in 2000 steps, not the
  quality dimensions (docs/recipes.md), so the mini-world tables use ``preference_model``.
"""

from __future__ import annotations

from pathlib import Path

from miniworld import world

PROMPT_TEMPLATE = "{prompt} <|VQ_reward|> <|MQ_reward|> <|TA_reward|>"


def base_folder(folder: str | Path = "runs/miniworld-qwen2vl", hidden_size: int = 64, num_layers: int = 2,
                vision_depth: int = 2) -> Path:
    """The tiny Qwen2-VL base (config + world tokenizer), written when absent; the folder name records its size."""
    from rewards.testing import save_tiny_qwen2_vl

    path = Path(folder) / f"h{hidden_size}_l{num_layers}_v{vision_depth}"
    if not (path / "config.json").is_file():
        save_tiny_qwen2_vl(path, vocabulary=world.world_vocabulary(), hidden_size=hidden_size, num_layers=num_layers,
                           vision_depth=vision_depth)
    return path


def videoreward_model(folder: str | Path = "runs/miniworld-qwen2vl", hidden_size: int = 64, num_layers: int = 2,
                      vision_depth: int = 2, sample_fps: float = 4.0, seed: int = 0):
    """A fresh mini-world ``VideoRewardModel`` (every weight drawn from ``seed``, all trainable)."""
    from rewards.videoreward import build_videoreward_model

    side = 56 * 56
    return build_videoreward_model(base_folder(folder, hidden_size, num_layers, vision_depth),
                                   prompt_template=PROMPT_TEMPLATE, sample_fps=sample_fps, min_pixels=side,
                                   max_pixels=side, pretrained=False, seed=seed)


def preference_model(space: str = "pixels", width: int = 32, depth: int = 4, seed: int = 0,
                     teacher: str | Path | None = None):
    """The mini world's small convolutional reward model (``rewards.preference_model.PreferenceRewardModel``) on
    the shipped teacher (its text encoder conditions the model; for ``space: latents`` also its VAE and noise
    schedule): what the BTT / BT / regression comparison and reward guidance train."""
    from miniworld.assets import load_teacher
    from rewards.preference_model import PreferenceRewardModel

    return PreferenceRewardModel(load_teacher(teacher).freeze(), space=space, width=width, depth=depth, seed=seed)
