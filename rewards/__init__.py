"""Reward models shared by every alignment recipe: a name -> builder registry."""

from rewards.base import VideoReward, build_reward, list_rewards, register_reward

__all__ = ["VideoReward", "build_reward", "list_rewards", "register_reward"]
