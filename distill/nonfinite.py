"""Non-finite guard: an optimizer step whose loss or gradient holds NaN or Inf is skipped, never applied.

A skipped step leaves the weights, the optimizer moments, the LR schedule and the EMA target as
they were; it is logged and counted (``train/skipped_steps``), and after
``train.max_consecutive_skips`` skipped steps in a row the run stops with ``NonFiniteError`` naming
the step. A checkpoint or a student whose weights are not all finite is never written
(``nonfinite_tensors``), so rotation only ever deletes checkpoints older than a finite one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import torch

from distill.sharding import local_view

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf values it cannot recover from (the message names the step)."""


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the tensors that hold at least one NaN or Inf (``None`` entries are ignored). Of a sharded
    tensor (FSDP) only this process's rows are read: the trainer agrees the answer across processes."""
    named = [(name, local_view(t)) for name, t in named if t is not None]
    if not named:
        return []
    device = named[0][1].device  # one host sync for all tensors, not one per tensor
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def nonfinite_reason(losses: Sequence[torch.Tensor],
                     named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | None = None) -> str | None:
    """Why an optimizer step must be skipped, or None when it may be applied.

    ``losses`` are the micro-batch losses of the accumulation window; ``named_parameters`` (optional)
    are checked for non-finite gradients. The reason names the first bad value.
    """
    for i, loss in enumerate(losses):
        if not torch.isfinite(loss.detach()).all():
            where = f" (micro-batch {i + 1} of {len(losses)})" if len(losses) > 1 else ""
            return f"loss={loss.detach().float().sum().item()}{where}"
    if named_parameters is not None:
        bad = nonfinite_tensors((name, p.grad) for name, p in named_parameters)
        if bad:
            return f"non-finite gradient in {len(bad)} tensor(s), first {bad[0]}"
    return None


@dataclasses.dataclass
class SkippedSteps:
    """Counts skipped optimizer steps; ``record`` raises ``NonFiniteError`` after ``max_consecutive`` in a row."""

    max_consecutive: int
    total: int = 0
    consecutive: int = 0

    def record(self, step: int, reason: str | None) -> None:
        if reason is None:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        logger.warning("step %d skipped (no optimizer update): %s; %d in a row, %d in total",
                       step, reason, self.consecutive, self.total)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} optimizer steps in a row had a non-finite loss or gradient "
                f"(last: {reason}); stopping (train.max_consecutive_skips={self.max_consecutive}). The weights "
                "are those of the last applied step; lower optimizer.lr or check the data, then continue with "
                "--resume latest"
            )

    def state_dict(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.consecutive = int(state["total"]), int(state["consecutive"])
