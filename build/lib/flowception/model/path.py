"""Per-frame probability path: straight line from noise to data (spec section 2)."""

from __future__ import annotations

import torch
from torch import Tensor


def _broadcast(t: Tensor, like: Tensor) -> Tensor:
    """View ``t`` of shape ``like.shape[:t.dim()]`` with trailing singleton dims."""
    return t.reshape(*t.shape, *([1] * (like.dim() - t.dim())))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x0 + t x1`` (spec E1).

    Args:
        x0: noise, ``[..., C, H, W]``.
        x1: data, same shape.
        t: per-frame time, shape ``x0.shape[:k]`` for some ``k`` (e.g. ``[B, F]`` or ``[n]``).
    """
    tt = _broadcast(t.to(x0.dtype), x0)
    return (1.0 - tt) * x0 + tt * x1


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """``u = x1 - x0`` (spec E2), constant along the path."""
    return x1 - x0


def warp_time(t: Tensor, shift: float) -> Tensor:
    """Time shift ``t / (t + s (1 - t))`` (spec E3); identity for ``s = 1``."""
    if shift == 1.0:
        return t
    return t / (t + shift * (1.0 - t))


def exact_point_mass_velocity(x: Tensor, t: Tensor, target: Tensor) -> Tensor:
    """Exact velocity ``(m - x) / (1 - t)`` when every frame's data is ``m`` (spec oracle 5).

    Frames at ``t = 1`` get zero velocity (the sampler never moves them).
    """
    tt = _broadcast(t.to(x.dtype), x)
    denom = torch.where(tt < 1.0, 1.0 - tt, torch.ones_like(tt))
    return torch.where(tt < 1.0, (target - x) / denom, torch.zeros_like(x))
