"""The paper's two baselines on the same backbone (spec section 10).

- ``full_sequence``: all ``L`` frames visible, one ``t ~ U(0, 1)`` per video shared by
  its frames, E13 on all non-context frames, no rate loss; sampling at a fixed length
  with ``K`` Euler steps.
- ``autoregressive``: frames ``< j`` clean (``t = 1``), frame ``j`` at ``t ~ U(0, 1)``,
  frames ``> j`` absent, E13 on frame ``j``; sampling ``K`` Euler steps per new frame.
  Block-causal attention is a backbone option (``ModelConfig.attention``).

Training draws return the same ``TrainingTimes`` as the Flowception sampler, so the
training step, packing and losses are shared. Samplers drive any callable
``fn(x, t, cu_seqlens) -> (velocity, rate)`` (the rate is ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowception.model.config import MethodConfig
from flowception.model.path import warp_time
from flowception.model.sampler import (
    Context,
    Guidance,
    SampleOutput,
    SampleTrace,
    VelocityField,
    apply_guidance,
)
from flowception.model.schedule import TrainingTimes, context_mask


def full_sequence_times(
    lengths: Tensor, num_slots: int, method: MethodConfig, generator: torch.Generator
) -> TrainingTimes:
    """Every valid frame visible at one shared ``t ~ U(0, 1)`` per video; no rate loss."""
    b, dev = lengths.shape[0], lengths.device
    idx = torch.arange(num_slots, device=dev).expand(b, num_slots)  # (B, F)
    valid = idx < lengths[:, None]
    ctx = context_mask(lengths, num_slots, method, generator) & valid
    tv = torch.rand(b, generator=generator, device=dev)  # (B,)
    t = warp_time(tv, method.time_shift)[:, None].expand(b, num_slots)
    t = torch.where(ctx, torch.ones_like(t), t)
    zeros = torch.zeros(b, num_slots, device=dev)
    return TrainingTimes(
        tau_g=tv, delay=zeros, tau=t.clone(), t=t, valid=valid, is_context=ctx,
        is_start=valid & ~ctx, visible=valid, k=zeros.long(),
        velocity_mask=valid & ~ctx, rate_mask=torch.zeros_like(valid),
        loss_weight=torch.ones(b, device=dev),
    )  # fmt: skip


def autoregressive_times(
    lengths: Tensor, num_slots: int, method: MethodConfig, generator: torch.Generator
) -> TrainingTimes:
    """Draw ``j`` among non-context frames: prefix clean, frame ``j`` noisy, rest absent."""
    b, dev = lengths.shape[0], lengths.device
    idx = torch.arange(num_slots, device=dev).expand(b, num_slots)  # (B, F)
    valid = idx < lengths[:, None]
    ctx = context_mask(lengths, num_slots, method, generator) & valid
    cand = valid & ~ctx
    score = torch.rand(b, num_slots, generator=generator, device=dev).masked_fill(~cand, -1.0)
    j = score.argmax(1)  # (B,) uniform among candidates
    tv = torch.rand(b, generator=generator, device=dev)
    current = idx == j[:, None]
    visible = valid & (idx <= j[:, None])
    t = torch.where(
        current, warp_time(tv, method.time_shift)[:, None], torch.ones(b, num_slots, device=dev)
    )
    zeros = torch.zeros(b, num_slots, device=dev)
    return TrainingTimes(
        tau_g=tv, delay=zeros, tau=t.clone(), t=t, valid=valid, is_context=ctx,
        is_start=current, visible=visible, k=zeros.long(),
        velocity_mask=current, rate_mask=torch.zeros_like(valid),
        loss_weight=torch.ones(b, device=dev),
    )  # fmt: skip


def _guided(
    fn: VelocityField, guidance: Guidance | None, x: Tensor, t: Tensor, cu: Tensor, kw: dict
):
    v, lam = fn(x, t, cu, **kw)
    if guidance is not None and guidance.scale != 1.0:
        v_u, lam_u = guidance.unconditional(x, t, cu, **kw)
        v, lam = apply_guidance(v, lam, v_u, lam_u, guidance.scale, 1.0)
    return v


def _start(
    num_videos: int,
    frame_shape: tuple[int, int, int],
    context: Context | None,
    device: torch.device,
) -> list[Tensor]:
    if context is not None and len(context.frames) != num_videos:
        raise ValueError(
            f"context.frames: expected {num_videos} entries, got {len(context.frames)}"
        )
    empty = torch.zeros(0, *frame_shape, device=device)
    return [
        empty if context is None else context.frames[i].to(device).float()
        for i in range(num_videos)
    ]


def sample_full_sequence(
    fn: VelocityField,
    *,
    num_videos: int,
    frame_shape: tuple[int, int, int],
    num_steps: int,
    lengths: Sequence[int],
    context: Context | None = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    time_shift: float = 1.0,
    device: torch.device | str = "cpu",
) -> SampleOutput:
    """Fixed-length videos (context frames first, then noise) denoised together in ``K`` steps."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dev = torch.device(device)
    ctx_frames = _start(num_videos, frame_shape, context, dev)
    xs, ctx = [], []
    for i in range(num_videos):
        c, total = ctx_frames[i].shape[0], int(lengths[i])
        if total <= c:
            raise ValueError(f"lengths[{i}]={total}: must exceed its {c} context frames")
        xs += [ctx_frames[i], torch.randn(total - c, *frame_shape, generator=g).to(dev)]
        ctx.append(torch.arange(total, device=dev) < c)
    x, is_ctx = torch.cat(xs), torch.cat(ctx)
    counts = torch.tensor([int(n) for n in lengths], device=dev)
    cu = torch.zeros(num_videos + 1, dtype=torch.int32, device=dev)
    cu[1:] = counts.cumsum(0)
    kw = {"is_context": is_ctx} if context is not None else {}
    for step in range(num_steps):
        t0 = warp_time(torch.tensor(step / num_steps, dtype=torch.float64), time_shift)
        t1 = warp_time(torch.tensor((step + 1) / num_steps, dtype=torch.float64), time_shift)
        t = torch.where(is_ctx, 1.0, float(t0)).to(x.dtype)
        v = _guided(fn, guidance, x, t, cu, kw)
        x = torch.where(is_ctx[:, None, None, None], x, x + float(t1 - t0) * v)
    trace = SampleTrace(
        lengths=counts.cpu()[None].repeat(num_steps + 1, 1),
        birth=[torch.zeros(int(n), dtype=torch.long) for n in lengths],
        iterations=num_steps,
    )
    return SampleOutput(videos=list(x.split(counts.tolist())), trace=trace)


def sample_autoregressive(
    fn: VelocityField,
    *,
    num_videos: int,
    frame_shape: tuple[int, int, int],
    num_steps: int,
    lengths: Sequence[int],
    context: Context | None = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    time_shift: float = 1.0,
    device: torch.device | str = "cpu",
) -> SampleOutput:
    """Frame by frame: ``K`` Euler steps on the newest frame given the clean prefix."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dev = torch.device(device)
    videos = _start(num_videos, frame_shape, context, dev)
    n_ctx = [v.shape[0] for v in videos]
    target = [int(n) for n in lengths]
    iterations = 0
    while True:
        grow = [i for i in range(num_videos) if videos[i].shape[0] < target[i]]
        if not grow:
            break
        new = torch.randn(len(grow), *frame_shape, generator=g).to(dev)  # (m, C, H, W)
        prefix = [videos[i] for i in grow]
        counts = torch.tensor([p.shape[0] + 1 for p in prefix], device=dev)
        cu = torch.zeros(len(grow) + 1, dtype=torch.int32, device=dev)
        cu[1:] = counts.cumsum(0)
        last = cu[1:].long() - 1  # packed index of each video's newest frame
        is_ctx = torch.cat(
            [torch.arange(int(c), device=dev) < n_ctx[i] for i, c in zip(grow, counts)]
        )
        kw = {"is_context": is_ctx} if context is not None else {}
        for step in range(num_steps):
            t0 = float(warp_time(torch.tensor(step / num_steps, dtype=torch.float64), time_shift))
            t1 = float(
                warp_time(torch.tensor((step + 1) / num_steps, dtype=torch.float64), time_shift)
            )
            x = torch.cat([torch.cat([p, n[None]]) for p, n in zip(prefix, new)])
            t = torch.ones(x.shape[0], dtype=x.dtype, device=dev)
            t[last] = t0
            v = _guided(fn, guidance, x, t, cu, kw)
            new = new + (t1 - t0) * v[last]
            iterations += 1
        for slot, i in enumerate(grow):
            videos[i] = torch.cat([videos[i], new[slot : slot + 1]])
    trace = SampleTrace(
        lengths=torch.tensor([target]),
        birth=[torch.arange(v.shape[0]) for v in videos],
        iterations=iterations,
    )
    return SampleOutput(videos=videos, trace=trace)
