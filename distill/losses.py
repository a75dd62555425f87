"""Losses of the training objectives: the consistency distance (online output vs. target), and the
preference losses of Diffusion-/Flow-DPO and reward-weighted regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_huber_loss(pred: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + c^2) - c): L2-like near 0, L1-like far away (Song & Dhariwal 2023)."""
    return torch.mean(torch.sqrt((pred.float() - target.float()) ** 2 + c**2) - c)


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((pred - target)^2)."""
    return torch.mean((pred.float() - target.float()) ** 2)


def consistency_distance(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001):
    """The CD loss d(f_theta, f_target) selected by name ('huber' or 'l2')."""
    if loss_type == "huber":
        return pseudo_huber_loss(pred, target, huber_c)
    if loss_type == "l2":
        return l2_loss(pred, target)
    raise ValueError(f"`loss_type`={loss_type!r} is not one of 'huber', 'l2'")


def dpo_loss(
    policy_error_w: torch.Tensor,
    policy_error_l: torch.Tensor,
    reference_error_w: torch.Tensor,
    reference_error_l: torch.Tensor,
    beta: torch.Tensor | float,
) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2024) / Flow-DPO (VideoAlign) per pair, (B,):

        -log sigmoid( -(beta / 2) [ (e_w - e_ref,w) - (e_l - e_ref,l) ] ),

    e = mean squared error of the network's output to its target (eps, or the velocity for flow models)
    at the same t and noise for the winner w and the loser l, under the policy and the frozen reference.
    The policy lowers its error on the winner relative to the reference's and raises it on the loser.
    """
    inside = -0.5 * beta * ((policy_error_w - reference_error_w) - (policy_error_l - reference_error_l))
    return -F.logsigmoid(inside)


def reward_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """Reward-weighted regression's normalised weights exp(r_i / tau) / sum_j exp(r_j / tau), (B,), summing to 1."""
    if not temperature > 0:
        raise ValueError(f"`temperature`={temperature} must be > 0")
    return torch.softmax(rewards.float() / temperature, dim=0)
