"""Learning-rate schedule: linear warmup, then cosine / linear / constant decay.

A pure function of the step, wrapped in a ``torch`` ``LambdaLR`` that DeepSpeed
steps with the optimiser (its state is saved in the DeepSpeed checkpoint).
"""

from __future__ import annotations

import math

import torch

from flowception.cluster.config import OptimConfig


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``optim.lr`` for optimiser step ``step`` (0-based).

    ``(step + 1) / warmup`` during warmup, then from 1 down to ``min_lr_ratio`` at
    ``total_steps`` along the chosen decay; constant after ``total_steps``.
    """
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return 1.0
    span = max(total_steps - optim.warmup_steps, 1)
    progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
    if optim.decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape


def lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``lr_factor`` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, optim, total_steps)
    )
