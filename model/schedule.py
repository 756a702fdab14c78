"""The extended-time training sampler (spec sections 3-5, E4-E12).

Pure functions of tensors and an explicit ``torch.Generator``: which frames are
start, context and padding, their insertion delays, the global time, per-frame
times, visibility, the insertion-count targets ``k`` and the loss masks. Vectorised
over the batch; the only Python loop is over the 8 rejection rounds (spec 4.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowception.model.config import MethodConfig
from flowception.model.path import warp_time

_EPS_END = 1e-3  # tau_max = max d + 1 - 1e-3 (spec 4.4)
_REJECTION_ROUNDS = 8  # spec 4.5
_NEVER = 4.0  # delay of padding slots: tau = tau_g - 4 < 0 for every tau_g <= 2


@dataclass(frozen=True)
class TrainingTimes:
    """One draw of the training sampler; every tensor is ``[B, F]`` unless noted."""

    tau_g: Tensor  # [B] global extended time
    delay: Tensor  # d_i (E4); padding slots get a delay that keeps them invisible
    tau: Tensor  # tau_i = tau_g - d_i (E5)
    t: Tensor  # model time t_i (E6, then E3); 1 for context frames
    valid: Tensor  # bool, real frames (slot < length)
    is_context: Tensor  # bool, conditioning frames (spec section 10)
    is_start: Tensor  # bool, start frames (spec 4.1)
    visible: Tensor  # bool, E7
    k: Tensor  # int64, missing frames right of each visible frame (E10); 0 elsewhere
    velocity_mask: Tensor  # bool, E11
    rate_mask: Tensor  # bool, E12
    loss_weight: Tensor  # [B] float, E8w: tau_max / mean(tau_max), ones when off


def context_mask(
    lengths: Tensor, num_slots: int, method: MethodConfig, generator: torch.Generator
) -> Tensor:
    """Context frames of each video for the task (spec section 10), ``[B, F]`` bool.

    Raises:
        ValueError: if a video is too short to keep a non-context frame.
    """
    b = lengths.shape[0]
    idx = torch.arange(num_slots, device=lengths.device).expand(b, num_slots)  # (B, F)
    last = (lengths - 1)[:, None]
    if method.task == "unconditional":
        ctx = torch.zeros(b, num_slots, dtype=torch.bool, device=lengths.device)
        min_len = 1
    elif method.task == "image_to_video":
        ctx = idx == 0
        min_len = 2
    elif method.task == "continuation":
        c = torch.clamp(lengths - 1, max=method.continuation_frames)[:, None]
        ctx = idx < c
        min_len = 2
    else:  # interpolation: first, last, and inner keyframes with a small probability
        inner = torch.rand(b, num_slots, generator=generator, device=lengths.device)
        ctx = (idx == 0) | (idx == last) | ((inner < method.interp_context_prob) & (idx < last))
        min_len = 3
        # keep at least one inner frame free: if all inner frames were drawn, free the middle one
        inner_free = (~ctx & (idx < last)).sum(1)
        mid = (lengths // 2)[:, None]
        ctx = ctx & ~((inner_free == 0)[:, None] & (idx == mid))
    if method.uncond_prob > 0 and method.task != "unconditional":
        plain = (
            torch.rand(b, generator=generator, device=lengths.device) < method.uncond_prob
        )  # (B,)
        ctx = ctx & ~plain[:, None]
    if bool((lengths < min_len).any()):
        raise ValueError(
            f"lengths={lengths.tolist()}: task {method.task!r} needs videos of >= {min_len} frames"
        )
    return ctx


def sample_training_times(
    lengths: Tensor,
    num_slots: int,
    method: MethodConfig,
    generator: torch.Generator,
    is_context: Tensor | None = None,
) -> TrainingTimes:
    """Draw start/context frames, delays and the global time; derive times, visibility,
    targets and masks (spec E4-E12).

    Args:
        lengths: ``[B]`` int, valid frames per video (``1 <= L <= F``).
        num_slots: ``F``, frame slots of the padded batch.
        method: the method config (``n_start``, ``n_start_context``, ``tau_g_law``,
            ``tau_g_weighting``, ``tau_g_stratified``, ``time_shift``, ``task``).
        generator: the only source of randomness.
        is_context: optional ``[B, F]`` bool overriding the task's context frames.

    Returns:
        A ``TrainingTimes`` with ``[B, F]`` tensors.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths: expected shape [B], got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > num_slots).any()):
        raise ValueError(f"lengths={lengths.tolist()}: each must be in [1, F={num_slots}]")
    dev = lengths.device
    b, f = lengths.shape[0], num_slots
    idx = torch.arange(f, device=dev).expand(b, f)  # (B, F)
    valid = idx < lengths[:, None]
    ctx = context_mask(lengths, f, method, generator) if is_context is None else is_context.bool()
    ctx = ctx & valid
    cand = valid & ~ctx  # frames that flow (spec 4.4)
    if bool((cand.sum(1) == 0).any()):
        raise ValueError("every video needs at least one non-context frame")

    # [1] start frames: frame 0 first when it is not context, the rest uniformly (spec 4.1)
    score = torch.rand(b, f, generator=generator, device=dev)
    score = torch.where(idx == 0, torch.full_like(score, -1.0), score)
    score = torch.where(cand, score, torch.full_like(score, 2.0))
    rank = score.argsort(dim=1).argsort(dim=1)  # (B, F) rank of each slot's score
    has_ctx = ctx.any(1)  # (B,) a video's n_s: method.start_frames (n_start_context with context)
    n_s = torch.where(has_ctx, method.start_frames(True), method.start_frames(False))
    is_start = cand & (rank < n_s[:, None])
    if bool(((n_s == 0) & ~ctx[:, 0]).any()):
        raise ValueError("n_start=0 needs frame 0 to be a context frame in every video")

    # [2] delays (E4): 0 for start and context frames, U[0, 1) for the rest, never for padding
    u = torch.rand(b, f, generator=generator, device=dev)
    delay = torch.where(is_start | ctx, torch.zeros_like(u), u)
    delay = torch.where(valid, delay, torch.full_like(u, _NEVER))

    # [3] global time (E8 / E9) with rejection (spec 4.5)
    tau_max = torch.where(cand, delay, torch.zeros_like(delay)).amax(1) + 1.0 - _EPS_END  # (B,)

    def draw(stratified: bool = False) -> Tensor:
        if method.tau_g_law == "bounded_logit_normal" and not stratified:
            return torch.sigmoid(torch.randn(b, generator=generator, device=dev)) * tau_max
        u = torch.rand(b, generator=generator, device=dev)
        if stratified:  # one draw in each of B strata, in random order: marginals unchanged
            perm = torch.randperm(b, generator=generator, device=dev).to(u.dtype)
            u = ((perm + u) / b).clamp(min=1e-7, max=1.0 - 1e-7)
        if method.tau_g_law == "uniform02":
            return 2.0 * u
        if method.tau_g_law == "bounded_logit_normal":  # z = Phi^-1(u), a standard normal
            return torch.sigmoid(torch.special.ndtri(u)) * tau_max
        return u * tau_max

    def any_flowing(tg: Tensor) -> Tensor:
        tau = tg[:, None] - delay
        return (cand & (tau >= 0) & (tau < 1)).any(1)

    tau_g = draw(method.tau_g_stratified)
    for _ in range(_REJECTION_ROUNDS):
        ok = any_flowing(tau_g)
        if bool(ok.all()):
            break
        tau_g = torch.where(ok, tau_g, draw())
    ok = any_flowing(tau_g)
    if not bool(ok.all()):
        # fall back: a random candidate j, tau_g = d_j + U (1 - 1e-3)
        pick = torch.rand(b, f, generator=generator, device=dev).masked_fill(~cand, -1.0).argmax(1)
        d_j = delay.gather(1, pick[:, None]).squeeze(1)
        fallback = d_j + torch.rand(b, generator=generator, device=dev) * (1.0 - _EPS_END)
        tau_g = torch.where(ok, tau_g, fallback)

    # [4] per-video loss weights (E8w): importance weight from E8's (or E9 with rejection)
    # density 1 / tau_max of tau_g back to the untilted law
    if method.tau_g_weighting and method.tau_g_law != "bounded_logit_normal":
        loss_weight = tau_max / tau_max.mean()  # (B,)
    else:
        loss_weight = torch.ones_like(tau_max)

    # [5] per-frame times, visibility (E5-E7)
    tau = tau_g[:, None] - delay  # (B, F)
    t = warp_time(tau.clamp(0.0, 1.0), method.time_shift)
    t = torch.where(ctx, torch.ones_like(t), t)
    visible = valid & ((tau >= 0) | ctx)

    # [6] insertion targets and masks (E10-E12)
    k = insertion_targets(valid, visible)
    velocity_mask = visible & (tau >= 0) & (tau < 1) & ~ctx
    rate_mask = visible & (tau < 1)
    return TrainingTimes(
        tau_g=tau_g,
        delay=delay,
        tau=tau,
        t=t,
        valid=valid,
        is_context=ctx,
        is_start=is_start,
        visible=visible,
        k=k,
        velocity_mask=velocity_mask,
        rate_mask=rate_mask,
        loss_weight=loss_weight,
    )


def insertion_targets(valid: Tensor, visible: Tensor) -> Tensor:
    """``k_i``: valid missing frames between visible frame ``i`` and the next visible one
    (spec E10), ``[B, F]`` int64, 0 for non-visible slots.

    Each missing frame is owned by the nearest visible frame on its left (frame 0 is
    always visible, so every missing frame has an owner).
    """
    b, f = visible.shape
    idx = torch.arange(f, device=visible.device).expand(b, f)
    owner = torch.where(visible, idx, torch.full_like(idx, -1)).cummax(dim=1).values  # (B, F)
    missing = (valid & ~visible).long()
    k = torch.zeros(b, f, dtype=torch.long, device=visible.device)
    return k.scatter_add_(1, owner.clamp(min=0), missing * (owner >= 0).long())


def mean_insertion_target(
    length: int, method: MethodConfig, *, videos: int = 8192, seed: int = 0
) -> float:
    """The training law's mean ``k`` over rate-masked frames, E8w-weighted (E10, E12):
    the constant rate that minimises E14 for videos of ``length`` frames.

    It is what the rate head is initialised to (``DiT(rate_init=...)``); it depends weakly on
    the length (``n_s = 2``, unconditional: 0.17 at ``L = 3``, 0.44 at 16, 0.46 at 32) and
    is 1 when the method has no rate loss. Monte Carlo over ``videos`` draws of the law.
    """
    if method.method != "flowception":
        return 1.0
    lengths = torch.full((videos,), int(length), dtype=torch.long)
    s = sample_training_times(lengths, int(length), method, torch.Generator().manual_seed(seed))
    m = s.rate_mask.double() * s.loss_weight.double()[:, None]  # (B, F)
    # floor: clips too short to miss a frame (k always 0) still get a finite log-rate
    return max(float((s.k.double() * m).sum()) / float(m.sum()), 1e-3)
