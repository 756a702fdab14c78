"""Velocity and insertion losses (spec section 5, E13-E15)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossOutput:
    """``total = velocity + w_ins * insertion`` (spec E15); scalars."""

    total: Tensor
    velocity: Tensor
    insertion: Tensor


def _weighted_mask(mask: Tensor, weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``m_i * w_i`` as floats, ``[n]``; ``weight=None`` is all ones."""
    m = mask.to(dtype)
    if weight is None:
        return m
    if weight.shape != mask.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} differ")
    return m * weight.to(dtype)


def velocity_loss(
    pred: Tensor, target: Tensor, mask: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Mean squared error per element over eligible frames of the whole batch (spec E13),
    each frame weighted by its video's E8w weight in numerator and denominator.

    Args:
        pred: ``[n, C, H, W]`` predicted velocity.
        target: ``[n, C, H, W]`` target ``x1 - x0``.
        mask: ``[n]`` bool, E11.
        weight: ``[n]`` per-frame weight (its video's ``TrainingTimes.loss_weight``), or None.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    per_frame = (pred.float() - target.float()).pow(2).flatten(1).sum(1)  # (n,)
    elems = pred[0].numel() if pred.shape[0] else 1
    m = _weighted_mask(mask, weight, per_frame.dtype)
    return (per_frame * m).sum() / (elems * m.sum().clamp(min=1e-12))


def poisson_nll(
    rate_out: Tensor,
    k: Tensor,
    mask: Tensor,
    head: str = "exp",
    eps: float = 1e-6,
    weight: Tensor | None = None,
) -> Tensor:
    """Poisson NLL without ``log k!`` averaged over rate-eligible frames (spec E14), each
    frame weighted by its video's E8w weight in numerator and denominator.

    Args:
        rate_out: ``[n]`` the rate head's raw output ``l`` (before E16's positive map).
        k: ``[n]`` insertion-count targets (E10).
        mask: ``[n]`` bool, E12.
        head: ``"exp"`` computes ``exp(l) - k l`` from ``l`` directly (never ``log(exp(l))``);
            ``"softplus"`` computes ``lambda - k log(lambda + eps)``.
        weight: ``[n]`` per-frame weight (its video's ``TrainingTimes.loss_weight``), or None.
    """
    logit = rate_out.float()
    kf = k.to(logit.dtype)
    if head == "exp":
        nll = torch.exp(logit) - kf * logit
    elif head == "softplus":
        lam = torch.nn.functional.softplus(logit)
        nll = lam - kf * torch.log(lam + eps)
    else:
        raise ValueError(f"head={head!r}: expected 'exp' or 'softplus'")
    m = _weighted_mask(mask, weight, logit.dtype)
    return (nll * m).sum() / m.sum().clamp(min=1e-12)


def combine(velocity: Tensor, insertion: Tensor, w_ins: float) -> LossOutput:
    """``L = L_vel + w_ins L_ins`` (spec E15)."""
    return LossOutput(total=velocity + w_ins * insertion, velocity=velocity, insertion=insertion)
