"""The EMA target network theta^- of consistency distillation (the paper's option).

Only the trainable parameters are tracked (LoRA + guidance layer, or the whole UNet when
fully fine-tuned): the frozen base weights are the same in theta and theta^-. The target is
evaluated by swapping the shadow weights into the student for one no-grad forward, so the
base UNet is never copied.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from distill.sharding import copy_full_, is_sharded, reshard


class EMATarget:
    """theta^- <- mu theta^- + (1 - mu) theta after every optimizer step; theta^- starts at theta."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"`ema_decay`={decay} must lie in [0, 1]")
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(param.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def reset(self, module: nn.Module) -> None:
        """theta^- <- theta: copy the current weights (a reference model's refresh)."""
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].copy_(param.detach())

    @contextlib.contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load theta^- into ``module`` (use only outside any autograd graph of it)."""
        params = dict(module.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        reshard(module)  # under FSDP: no gathered copy of the weights outlives the swap (distill.sharding)
        try:
            yield module
        finally:
            reshard(module)
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict:
        """The shadow weights on the CPU; under FSDP they are sharded like the parameters they track, and the
        trainer gathers them whole (``distill.sharding.gathered``)."""
        return {"decay": self.decay, "shadow": {k: v if is_sharded(v) else v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise RuntimeError(f"EMA state does not match the student's trainable parameters: {sorted(missing)[:10]}")
        self.decay = state["decay"]
        for name, value in state["shadow"].items():
            copy_full_(self.shadow[name], value)
