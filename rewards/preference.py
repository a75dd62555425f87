"""Preference losses of reward modelling and the pairwise accuracies they are judged by.

A preference pair is (prompt, video A, video B) with one label per dimension: A preferred, B
preferred, or a tie. Labels are encoded as ``+1`` (A), ``-1`` (B) and ``0`` (tie); ``LABEL_CODES``
maps the CSV spellings to them. Every function takes the reward difference
``delta = r_A - r_B`` (any shape) and labels of the same shape.

Losses (VideoAlign, arXiv 2501.13918, Sec. 3 and its ablation):

- **BTT**, Bradley-Terry with ties (Rao & Kupper 1967) with theta > 1 (VideoAlign: theta = 5)::

      P(A > B) = sigmoid(delta - ln theta)
      P(B > A) = sigmoid(-delta - ln theta)
      P(tie)   = (theta^2 - 1) sigmoid(delta - ln theta) sigmoid(-delta - ln theta)

  (the three sum to one); loss = -log P(label), mean over pairs.
- **BT**, Bradley-Terry: P(A > B) = sigmoid(delta); loss = -log P(label) over the pairs that are not
  ties (tied pairs carry no Bradley-Terry likelihood and are left out).
- **regression**: each video's score regresses its absolute quality score: mean((r - (s - center))^2)
  over both videos of every pair (VideoAlign's ``reg``: center 3 on its 1..5 scale).

Accuracies (the paper's two):

- **without ties**: over the pairs not labelled a tie, the fraction whose sign(delta) equals the
  label (delta = 0 counts as wrong);
- **with ties**: the tie-calibrated accuracy of Deutsch et al. 2023 (arXiv 2305.14324): a pair is
  predicted a tie when |delta| <= epsilon; accuracy(epsilon) = (correct non-tie predictions on
  non-tie pairs + tie predictions on tie pairs) / all pairs, maximised over epsilon. The candidates
  are "no predicted ties" and every |delta_i| of the data (the accuracy only changes there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: label spellings in preference CSVs -> codes (+1: A preferred, -1: B preferred, 0: tie)
LABEL_CODES = {"A": 1, "B": -1, "tie": 0}
LOSSES = ("btt", "bt", "reg")


def label_code(text: str, where: str = "label") -> int:
    """The code of a label spelled ``A``, ``B`` or ``tie`` (case-insensitive); ``ValueError`` naming ``where``."""
    for spelling, code in LABEL_CODES.items():
        if str(text).strip().lower() == spelling.lower():
            return code
    raise ValueError(f"{where}: {text!r} is not a preference label; allowed: {sorted(LABEL_CODES)}")


def btt_log_probabilities(delta: torch.Tensor, theta: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log P(A > B), log P(B > A), log P(tie)) of Bradley-Terry with ties (module docstring)."""
    if not theta > 1.0:
        raise ValueError(f"`theta`={theta} must be > 1 (theta = 1 gives ties probability 0)")
    log_theta = math.log(theta)
    log_a = F.logsigmoid(delta - log_theta)
    log_b = F.logsigmoid(-delta - log_theta)
    return log_a, log_b, math.log(theta**2 - 1) + log_a + log_b


def btt_loss(delta: torch.Tensor, labels: torch.Tensor, theta: float = 5.0) -> torch.Tensor:
    """-log P(label) under Bradley-Terry with ties, mean over all pairs."""
    log_a, log_b, log_tie = btt_log_probabilities(delta, theta)
    labels = labels.to(delta.device)
    log_p = torch.where(labels > 0, log_a, torch.where(labels < 0, log_b, log_tie))
    return -log_p.mean()


def bt_loss(delta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(label * delta), mean over the pairs that are not ties (0 with a graph if all are)."""
    labels = labels.to(delta.device)
    decided = labels != 0
    if not decided.any():
        return delta.sum() * 0.0
    return -F.logsigmoid(labels[decided].to(delta.dtype) * delta[decided]).mean()


def regression_loss(scores: torch.Tensor, targets: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """mean((scores - (targets - center))^2) over every video."""
    return ((scores - (targets.to(scores) - center)) ** 2).mean()


def accuracy_without_ties(delta: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of the non-tie pairs whose sign(delta) equals the label; NaN when every pair is a tie."""
    delta, labels = delta.detach().flatten().cpu(), labels.flatten().cpu()
    decided = labels != 0
    if not decided.any():
        return float("nan")
    return float((torch.sign(delta[decided]) == labels[decided].to(delta.dtype)).float().mean())


def accuracy_with_ties(delta: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(tie-calibrated accuracy, the threshold epsilon* that reaches it; -1 = no predicted ties)."""
    delta = delta.detach().flatten().double().cpu()
    labels = labels.flatten().cpu()
    if delta.numel() == 0:
        return float("nan"), -1.0
    tie = labels == 0
    right = ~tie & (torch.sign(delta) == labels.to(delta.dtype))
    magnitude, order = delta.abs().sort()
    thresholds = torch.unique(magnitude)
    # pairs with |delta| <= threshold are predicted ties: count the tie pairs among them and the
    # correctly signed non-tie pairs among the others (cumulative counts over |delta|, sorted)
    covered = torch.searchsorted(magnitude, thresholds, right=True) - 1
    ties_covered = torch.cumsum(tie[order].double(), 0)[covered]
    right_covered = torch.cumsum(right[order].double(), 0)[covered]
    correct = torch.cat([right.sum().double().view(1), ties_covered + right.sum() - right_covered])
    candidates = torch.cat([torch.tensor([-1.0], dtype=torch.float64), thresholds])
    best = int(torch.argmax(correct))  # the first (smallest) threshold among equals
    return float(correct[best] / delta.numel()), float(candidates[best])


def preference_loss(
    name: str,
    delta: torch.Tensor,
    labels: torch.Tensor,
    theta: float = 5.0,
    scores: tuple[torch.Tensor, torch.Tensor] | None = None,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    center: float = 0.0,
) -> torch.Tensor:
    """The loss selected by ``name`` (``btt``, ``bt`` or ``reg``); ``reg`` needs the scores (r_A, r_B)
    and the absolute targets (s_A, s_B)."""
    if name == "btt":
        return btt_loss(delta, labels, theta)
    if name == "bt":
        return bt_loss(delta, labels)
    if name == "reg":
        if scores is None or targets is None:
            raise ValueError("loss 'reg' needs each video's score and absolute target score")
        return regression_loss(torch.cat(scores), torch.cat(targets), center)
    raise ValueError(f"`loss`={name!r} is not one of {LOSSES}")
