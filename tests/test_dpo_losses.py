"""Diffusion-/Flow-DPO and reward-weighted regression losses (distill/losses.py) and the training target
per prediction type (t2v_turbo/diffusion/prediction.py), against the formulas written out here."""

import math

import pytest
import torch

from distill.losses import dpo_loss, reward_weights
from t2v_turbo.diffusion.prediction import training_target


def test_dpo_loss_formula():
    e_w, e_l = torch.tensor([0.30, 0.10], dtype=torch.float64), torch.tensor([0.50, 0.05], dtype=torch.float64)
    r_w, r_l = torch.tensor([0.40, 0.10], dtype=torch.float64), torch.tensor([0.45, 0.20], dtype=torch.float64)
    beta = 100.0
    expected = []
    for i in range(2):
        inside = -(beta / 2) * ((e_w[i] - r_w[i]) - (e_l[i] - r_l[i])).item()
        expected.append(-math.log(1 / (1 + math.exp(-inside))))
    torch.testing.assert_close(dpo_loss(e_w, e_l, r_w, r_l, beta), torch.tensor(expected, dtype=torch.float64))
    # at the reference (policy == reference) the loss is log 2 whatever beta
    torch.testing.assert_close(dpo_loss(r_w, r_l, r_w, r_l, 5000.0), torch.full((2,), math.log(2), dtype=torch.float64))


def test_dpo_gradient_lowers_the_winner_error_and_raises_the_loser_error():
    e_w = torch.tensor([0.3], requires_grad=True)
    e_l = torch.tensor([0.3], requires_grad=True)
    dpo_loss(e_w, e_l, torch.tensor([0.3]), torch.tensor([0.3]), torch.tensor([10.0])).sum().backward()
    assert e_w.grad.item() == pytest.approx(10.0 / 4) and e_l.grad.item() == pytest.approx(-10.0 / 4)


def test_reward_weights_are_a_softmax_of_r_over_tau():
    r = torch.tensor([1.0, 2.0, 4.0])
    expected = torch.tensor([math.exp(0.5), math.exp(1.0), math.exp(2.0)])
    torch.testing.assert_close(reward_weights(r, 2.0), expected / expected.sum())
    assert reward_weights(r, 1e-3).argmax() == 2 and reward_weights(r, 1e-3).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        reward_weights(r, 0.0)


def test_training_target_per_prediction_type():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(training_target("epsilon", x0, eps), eps)
    torch.testing.assert_close(training_target("flow", x0, eps), eps - x0)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target("v_prediction", x0, eps)
