"""Distances between the online consistency output and its target."""

from __future__ import annotations

import torch


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
