"""The mini world's multi-dimensional reward model: VideoReward's architecture at a tiny size, from scratch.

A Qwen2-VL of ``hidden_size`` over a word tokenizer of the world's vocabulary (written once as a base
folder: config + tokenizer, ``rewards.testing.save_tiny_qwen2_vl``), with one reward token per
dimension (VQ, MQ, TA) and a short prompt template; trained by the reward-model recipe
(``configs/miniworld_reward_model.yaml``) on the world's ground-truth preference pairs
(``miniworld.preferences``). Each 32x32 frame becomes 56x56 (4 x 4 patches of 14, 4 merged tokens);
frames are taken at ``sample_fps`` of the world's 8.
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
