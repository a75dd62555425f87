"""Preference losses and pairwise accuracies (rewards/preference.py) against the formulas written out here."""

import math

import pytest
import torch

from rewards.preference import (
    accuracy_with_ties,
    accuracy_without_ties,
    bt_loss,
    btt_log_probabilities,
    btt_loss,
    label_code,
    preference_loss,
    regression_loss,
)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("delta", [-4.0, -1.0, 0.0, 0.7, 3.0])
def test_btt_probabilities_are_rao_kupper_with_theta_5(delta):
    theta = 5.0
    log_a, log_b, log_tie = (v.item() for v in btt_log_probabilities(torch.tensor([delta], dtype=torch.float64), theta))
    # Rao-Kupper with pi = exp(r): P(A > B) = pi_A / (pi_A + theta pi_B), P(tie) from the formula
    pi_a, pi_b = math.exp(delta), 1.0
    assert math.exp(log_a) == pytest.approx(pi_a / (pi_a + theta * pi_b), rel=1e-12)
    assert math.exp(log_b) == pytest.approx(pi_b / (pi_b + theta * pi_a), rel=1e-12)
    tie = (theta**2 - 1) * sigmoid(delta - math.log(theta)) * sigmoid(-delta - math.log(theta))
    assert math.exp(log_tie) == pytest.approx(tie, rel=1e-12)
    assert math.exp(log_a) + math.exp(log_b) + math.exp(log_tie) == pytest.approx(1.0, abs=1e-12)


def test_btt_loss_is_mean_negative_log_likelihood_of_the_labels():
    delta = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64)
    labels = torch.tensor([1, -1, 0])
    ln5 = math.log(5.0)
    expected = -(
        math.log(sigmoid(2.0 - ln5))
        + math.log(sigmoid(0.5 - ln5))
        + math.log(24 * sigmoid(0.1 - ln5) * sigmoid(-0.1 - ln5))
    ) / 3
    assert btt_loss(delta, labels).item() == pytest.approx(expected, rel=1e-12)
    assert preference_loss("btt", delta, labels).item() == pytest.approx(expected, rel=1e-12)


def test_btt_gradient_pulls_ties_together_and_winners_apart():
    delta = torch.tensor([0.8, 0.8, -0.8], requires_grad=True)
    btt_loss(delta, torch.tensor([0, 1, 0])).backward()
    assert delta.grad[0] > 0 and delta.grad[2] < 0  # a tie pushes |delta| down
    assert delta.grad[1] < 0  # "A preferred" pushes delta up


def test_bt_loss_skips_ties():
    delta = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64, requires_grad=True)
    loss = bt_loss(delta, torch.tensor([1, 1, 0]))
    assert loss.item() == pytest.approx(-(math.log(sigmoid(1.5)) + math.log(sigmoid(-2.0))) / 2, rel=1e-12)
    loss.backward()
    assert delta.grad[2] == 0
    only_ties = bt_loss(delta, torch.tensor([0, 0, 0]))
    assert only_ties.item() == 0 and only_ties.requires_grad


def test_regression_loss_centres_the_targets():
    scores = torch.tensor([0.5, -1.0, 2.0])
    targets = torch.tensor([4.0, 2.0, 5.0])
    expected = ((0.5 - 1.0) ** 2 + (-1.0 + 1.0) ** 2 + (2.0 - 2.0) ** 2) / 3
    assert regression_loss(scores, targets, center=3.0).item() == pytest.approx(expected)
    reg = preference_loss("reg", None, None, scores=(scores[:2], scores[2:]), targets=(targets[:2], targets[2:]), center=3.0)
    assert reg.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs each video's score"):
        preference_loss("reg", scores, targets)
    with pytest.raises(ValueError, match="not one of"):
        preference_loss("hinge", scores, targets)


def test_accuracy_without_ties_drops_tied_pairs_and_counts_zero_delta_wrong():
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, -0.1])
    labels = torch.tensor([1, 1, 0, -1, -1])
    # non-tie pairs: 0 right, 1 wrong, 3 wrong (delta 0), 4 right -> 2 / 4
    assert accuracy_without_ties(delta, labels) == 0.5
    assert math.isnan(accuracy_without_ties(delta[:1], torch.tensor([0])))


def brute_force_accuracy_with_ties(delta, labels):
    """Deutsch et al.'s tie calibration written out: try every threshold, count right pairs."""
    best = (-1.0, None)
    for eps in [-1.0] + sorted({abs(d) for d in delta}):
        right = 0
        for d, h in zip(delta, labels):
            predicted_tie = abs(d) <= eps
            if h == 0:
                right += predicted_tie
            else:
                right += (not predicted_tie) and (d > 0) == (h > 0) and d != 0
        if right / len(delta) > best[0]:
            best = (right / len(delta), eps)
    return best


def test_accuracy_with_ties_hand_example():
    delta = torch.tensor([2.0, 0.1, -0.05, 1.0, -3.0])
    labels = torch.tensor([1, 0, 0, -1, -1])
    # eps = 0.1: ties predicted for pairs 1 and 2 (both right); 0 right, 3 wrong, 4 right -> 4 / 5
    assert accuracy_with_ties(delta, labels) == pytest.approx((0.8, 0.1))


@pytest.mark.parametrize("seed", range(4))
def test_accuracy_with_ties_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    # rounded deltas: repeated magnitudes, exact zeros and sign flips all occur
    delta = (torch.randn(60, generator=g) * 2).round() / 2
    labels = torch.randint(-1, 2, (60,), generator=g)
    accuracy, eps = accuracy_with_ties(delta, labels)
    expected_accuracy, expected_eps = brute_force_accuracy_with_ties(delta.tolist(), labels.tolist())
    assert accuracy == pytest.approx(expected_accuracy, abs=1e-12)
    assert eps == pytest.approx(expected_eps)
    assert accuracy >= accuracy_without_ties(delta, labels) * (labels != 0).float().mean().item() - 1e-12


def test_label_codes():
    assert [label_code(x) for x in ("A", "b", " Tie ")] == [1, -1, 0]
    with pytest.raises(ValueError, match="pairs.csv row 3.*'C' is not a preference label"):
        label_code("C", "pairs.csv row 3")
