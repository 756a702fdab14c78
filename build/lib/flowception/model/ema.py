"""Exponential moving average of weights (kept in fp32)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` after every optimiser step."""

    def __init__(self, net: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay}: must be in [0, 1)")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, net: nn.Module) -> None:
        """Load the averaged weights into ``net`` (cast to its dtypes)."""
        net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}
