"""The coupled ODE + jump sampler (spec sections 8-9, E17-E21, E25).

Drives any callable ``fn(x, t, cu_seqlens) -> (velocity, rate)`` on the packed
frames of a batch of videos that grow to different lengths. One network call per
iteration for all unfinished videos; finished videos stop costing compute.

Entry point::

    out = sample(fn, num_videos=8, frame_shape=(1, 32, 32), num_steps=50,
                 num_start_frames=2, max_frames=32, generator=g, return_trace=True)
    out.videos  # list of [F_b, C, H, W]
    out.trace.lengths  # [iterations, B] lengths per iteration

Times are kept as integer step counters (``age``), so ``t = warp(min(age / K, 1))``
is exact at 1 and the time shift (E3) needs no separate clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from flowception.model.path import warp_time

VelocityField = Callable[..., tuple[Tensor, Tensor]]
InsertionRule = Literal["learned", "left_to_right", "hierarchical", "random"]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (E20) and insertion guidance (E21).

    ``unconditional`` is a callable with the same contract as ``fn`` (null condition,
    zeroed context stream); it is not called when both scales are 1.
    """

    unconditional: VelocityField
    scale: float = 1.0
    insertion_scale: float = 1.0


@dataclass(frozen=True)
class Context:
    """Context frames per video (spec section 10), placed before the start frames.

    ``frames[b]`` is ``[c_b, C, H, W]`` (clean keyframes in order; may be empty).
    """

    frames: Sequence[Tensor]


@dataclass(frozen=True)
class SampleTrace:
    """``lengths [iterations + 1, B]`` and per video the iteration each frame was born at."""

    lengths: Tensor
    birth: list[Tensor]
    iterations: int


@dataclass(frozen=True)
class SampleOutput:
    videos: list[Tensor]
    trace: SampleTrace | None


def apply_guidance(
    v_c: Tensor, lam_c: Tensor, v_u: Tensor | None, lam_u: Tensor | None, s: float, s_ins: float
) -> tuple[Tensor, Tensor]:
    """``v = s v_c + (1 - s) v_u`` (E20), ``lambda = lambda_c^s_ins lambda_u^(1 - s_ins)`` (E21).

    A scale of exactly 1 returns the conditional output unchanged.
    """
    v = v_c if s == 1.0 else s * v_c + (1.0 - s) * v_u
    if s_ins == 1.0:
        lam = lam_c
    else:
        tiny = torch.finfo(lam_c.dtype).tiny
        lam = torch.exp(
            s_ins * lam_c.clamp_min(tiny).log() + (1.0 - s_ins) * lam_u.clamp_min(tiny).log()
        )
    return v, lam


def reveal_order(rule: InsertionRule, length: int, generator: torch.Generator) -> list[int]:
    """The order in which the ``L*`` slots of a video are revealed (spec E25)."""
    if rule == "left_to_right":
        return list(range(length))
    if rule == "random":
        rest = (torch.randperm(length - 1, generator=generator) + 1).tolist() if length > 1 else []
        return [0, *rest]
    if rule == "hierarchical":
        order, seen = [0], {0}
        if length > 1:
            order.append(length - 1)
            seen.add(length - 1)
        intervals = [(0, length - 1)]
        while intervals:
            nxt = []
            for lo, hi in intervals:
                if hi - lo < 2:
                    continue
                mid = (lo + hi) // 2
                if mid not in seen:
                    order.append(mid)
                    seen.add(mid)
                nxt += [(lo, mid), (mid, hi)]
            intervals = nxt
        return order
    raise ValueError(
        f"insertion_rule={rule!r}: expected learned, left_to_right, hierarchical, random"
    )


class _State:
    """Packed state of all videos: frames in video order, each video contiguous."""

    def __init__(
        self, x: Tensor, video: Tensor, age: Tensor, ctx: Tensor, birth: Tensor, slot: Tensor
    ):
        self.x, self.video, self.age, self.ctx, self.birth, self.slot = (
            x,
            video,
            age,
            ctx,
            birth,
            slot,
        )

    def insert(self, after: Tensor, new: dict[str, Tensor], tie: Tensor) -> None:
        """Place new frames right after packed indices ``after [m]`` (``tie`` orders several
        new frames after the same frame) with one stable sort."""
        n = self.x.shape[0]
        keys = torch.cat([torch.arange(n, dtype=torch.float64), after.double() + 0.25 + 0.5 * tie])
        order = torch.argsort(keys, stable=True)
        for name in ("x", "video", "age", "ctx", "birth", "slot"):
            setattr(self, name, torch.cat([getattr(self, name), new[name]])[order])


def sample(
    fn: VelocityField,
    *,
    num_videos: int,
    frame_shape: tuple[int, int, int],
    num_steps: int,
    num_start_frames: int,
    max_frames: int,
    context: Context | None = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
    insertion: Literal["bernoulli", "poisson"] = "bernoulli",
    insertion_rule: InsertionRule = "learned",
    target_lengths: Sequence[int] | None = None,
    time_shift: float = 1.0,
    device: torch.device | str = "cpu",
) -> SampleOutput:
    """Generate ``num_videos`` videos of learned (or prescribed) length (spec section 8).

    Args:
        fn: ``fn(x [n, C, H, W], t [n], cu_seqlens int32 [B + 1]) -> (velocity, rate [n])``;
            called with ``is_context=`` (bool ``[n]``) when context frames exist.
        num_videos: ``B``.
        frame_shape: ``(C, H, W)``.
        num_steps: ``K``; step size ``h = 1 / K``.
        num_start_frames: noise frames each video starts from (after its context frames).
        max_frames: length cap; proposals beyond it are accepted in random order until full.
        context: optional per-video clean context frames (image-to-video, keyframes, prefix).
        guidance: optional CFG / insertion guidance (spec section 9).
        generator: source of all randomness (noise, insertion draws, cap order).
        return_trace: also return lengths per iteration and each frame's birth iteration.
        insertion: E19's clipped probability or its Poisson variant.
        insertion_rule: ``learned`` (E19) or a prescribed order of ``target_lengths`` (E25).
        target_lengths: ``L*`` per video for prescribed orders.
        time_shift: ``s`` of E3 (1 = off).
        device: where the state lives.

    Returns:
        ``SampleOutput`` with ``videos`` (list of ``[F_b, C, H, W]``) and ``trace``.
    """
    if num_videos < 1 or num_steps < 1 or max_frames < 1 or num_start_frames < 0:
        raise ValueError(
            f"num_videos={num_videos}, num_steps={num_steps}, max_frames={max_frames}, "
            f"num_start_frames={num_start_frames}: must be >= 1 (start frames >= 0)"
        )
    if context is not None and len(context.frames) != num_videos:
        raise ValueError(
            f"context.frames: expected {num_videos} entries, got {len(context.frames)}"
        )
    g = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
    dev = torch.device(device)
    k_steps, h = num_steps, 1.0 / num_steps
    b = num_videos

    def noise(m: int) -> Tensor:
        return torch.randn(m, *frame_shape, generator=g).to(dev)

    # [0] initial state: context frames (clean, t = 1), then start frames of noise (t = 0)
    n_ctx = [0 if context is None else int(context.frames[i].shape[0]) for i in range(b)]
    n_start = num_start_frames
    if insertion_rule != "learned":
        if target_lengths is None or len(target_lengths) != b:
            raise ValueError(
                f"insertion_rule={insertion_rule!r} needs target_lengths for {b} videos"
            )
        orders = [reveal_order(insertion_rule, int(target_lengths[i]), g) for i in range(b)]
    if any(c + n_start == 0 for c in n_ctx):
        raise ValueError("each video needs at least one context or start frame")
    if any(c + n_start > max_frames for c in n_ctx):
        raise ValueError(f"max_frames={max_frames}: smaller than context + start frames {n_ctx}")
    xs, videos, ctxs, slots = [], [], [], []
    for i in range(b):
        if n_ctx[i]:
            cf = context.frames[i].to(dev)
            if tuple(cf.shape[1:]) != tuple(frame_shape):
                raise ValueError(
                    f"context.frames[{i}]: expected [c, {frame_shape}], got {tuple(cf.shape)}"
                )
            xs.append(cf)
        xs.append(noise(n_start))
        videos.append(torch.full((n_ctx[i] + n_start,), i, dtype=torch.long))
        ctxs.append(torch.arange(n_ctx[i] + n_start) < n_ctx[i])
        slots.append(
            torch.tensor(orders[i][:n_start], dtype=torch.long)
            if insertion_rule != "learned"
            else torch.arange(n_ctx[i] + n_start)
        )
    if insertion_rule != "learned" and any(n_ctx):
        raise ValueError("prescribed insertion orders are defined for unconditional starts only")
    if insertion_rule != "learned":
        slots = [s.sort().values for s in slots]
    st = _State(
        x=torch.cat(xs).float(),
        video=torch.cat(videos).to(dev),
        age=torch.zeros(sum(n_ctx) + b * n_start, dtype=torch.long, device=dev),
        ctx=torch.cat(ctxs).to(dev),
        birth=torch.zeros(sum(n_ctx) + b * n_start, dtype=torch.long, device=dev),
        slot=torch.cat(slots).to(dev),
    )
    clock = torch.zeros(b, dtype=torch.long, device=dev)  # insertion clock t_g = clock / K (E18)
    revealed = torch.full((b,), n_start, dtype=torch.long)
    has_context = any(n_ctx)
    lengths_trace = [torch.bincount(st.video, minlength=b).cpu()]

    def times(age: Tensor, ctx: Tensor) -> Tensor:
        t = warp_time((age.double() * h).clamp(max=1.0), time_shift).to(st.x.dtype)
        return torch.where(ctx | (age >= k_steps), torch.ones_like(t), t)

    iteration = 0
    while True:
        finished_frames = st.ctx | (st.age >= k_steps)
        vid_busy = torch.zeros(b, dtype=torch.bool, device=dev)
        vid_busy[st.video[~finished_frames]] = True
        active = vid_busy | (clock < k_steps)  # (B,)
        if not bool(active.any()):
            break
        iteration += 1
        sel = active[st.video]  # (n_all,) frames of unfinished videos
        x, age, ctx = st.x[sel], st.age[sel], st.ctx[sel]
        vid = st.video[sel]
        # finished videos stay in cu_seqlens as empty segments, so B (and labels) never change
        counts = torch.bincount(vid, minlength=b)
        cu = torch.zeros(b + 1, dtype=torch.int32, device=dev)
        cu[1:] = counts.cumsum(0)
        t = times(age, ctx)  # (n,)

        # [1] network call (+ guidance, spec 9)
        kwargs = {"is_context": ctx} if has_context else {}
        v, lam = fn(x, t, cu, **kwargs)
        if guidance is not None and (guidance.scale != 1.0 or guidance.insertion_scale != 1.0):
            v_u, lam_u = guidance.unconditional(x, t, cu, **kwargs)
            v, lam = apply_guidance(v, lam, v_u, lam_u, guidance.scale, guidance.insertion_scale)

        # [2] flow step (E17): masked so a non-finite velocity on a finished frame never lands
        t_next = times(age + 1, ctx)
        delta = torch.where(ctx | (age >= k_steps), torch.zeros_like(t), t_next - t)
        moving = delta > 0
        x = torch.where(moving[:, None, None, None], x + delta[:, None, None, None] * v, x)

        # [3-4] insertion draws while the clock t_g < 1 (E18, E19)
        tg = clock[vid].double() * h  # (n,)
        open_clock = clock[vid] < k_steps
        if insertion_rule == "learned":
            hazard = lam.double().clamp_min(0) * h / (1.0 - tg).clamp_min(h)
            p = 1.0 - torch.exp(-hazard) if insertion == "poisson" else hazard.clamp(0.0, 1.0)
            p = torch.where(open_clock, p, torch.zeros_like(p))
            draws = torch.rand(p.shape, generator=g, dtype=torch.float64).to(dev) < p
        # [5] advance times and clocks
        st.x[sel] = x
        st.age[sel] = torch.where(ctx, age, age + 1)
        clock = torch.where(active, (clock + 1).clamp(max=k_steps), clock)

        # [6-7] insert new noise frames right of each success, capped at max_frames
        all_idx = sel.nonzero(as_tuple=True)[0]
        if insertion_rule == "learned":
            after = all_idx[draws]
            after = _cap(after, st.video, max_frames, b, g)
            tie = torch.zeros_like(after, dtype=torch.float64)
            new_slots = torch.zeros_like(after)
        else:
            after, new_slots, tie = _prescribed(
                st, orders, revealed, clock, k_steps, active, n_start
            )
        m = after.numel()
        if m:
            st.insert(
                after,
                dict(
                    x=noise(m),
                    video=st.video[after],
                    age=torch.zeros(m, dtype=torch.long, device=dev),
                    ctx=torch.zeros(m, dtype=torch.bool, device=dev),
                    birth=torch.full((m,), iteration, dtype=torch.long, device=dev),
                    slot=new_slots,
                ),
                tie,
            )
        lengths_trace.append(torch.bincount(st.video, minlength=b).cpu())

    counts = torch.bincount(st.video, minlength=b).tolist()
    videos_out = list(st.x.split(counts))
    trace = None
    if return_trace:
        trace = SampleTrace(
            lengths=torch.stack(lengths_trace),
            birth=list(st.birth.split(counts)),
            iterations=iteration,
        )
    return SampleOutput(videos=videos_out, trace=trace)


def _cap(after: Tensor, video: Tensor, max_frames: int, b: int, g: torch.Generator) -> Tensor:
    """Keep proposals (packed indices) in random order per video until ``max_frames`` (spec 8.7)."""
    if after.numel() == 0:
        return after
    room = (max_frames - torch.bincount(video, minlength=b)).clamp(min=0)  # (B,)
    pv = video[after]
    score = torch.rand(after.numel(), generator=g, dtype=torch.float64).to(after.device)
    order = torch.argsort(pv.double() * 2.0 + score)  # group by video, random within
    pv_sorted = pv[order]
    first = torch.searchsorted(pv_sorted, pv_sorted, right=False)  # first index of each video
    rank = torch.arange(after.numel(), device=after.device) - first
    keep = rank < room[pv_sorted]
    return after[order[keep]].sort().values


def _prescribed(
    st: _State,
    orders: list[list[int]],
    revealed: Tensor,
    clock: Tensor,
    k_steps: int,
    active: Tensor,
    n_start: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Slots revealed this iteration by E25, ``n(t_g) = n_s + floor((L* - n_s) t_g)``.

    ``clock`` is already advanced, so the target count is ``n(t_g + h)``. Returns the
    packed index each new frame goes after, its slot, and a tie-break that keeps
    several new frames after the same frame in slot order. Updates ``revealed``.
    """
    dev = st.video.device
    afters, slots, ties = [], [], []
    for i in active.nonzero(as_tuple=True)[0].tolist():
        total = len(orders[i])
        target = n_start + ((total - n_start) * int(clock[i])) // k_steps
        new = orders[i][int(revealed[i]) : target]
        revealed[i] = max(int(revealed[i]), target)
        if not new:
            continue
        idx = (st.video == i).nonzero(as_tuple=True)[0]
        vid_slots = st.slot[idx]
        for s in new:
            afters.append(idx[vid_slots < s][-1])  # nearest revealed slot on the left
            slots.append(s)
            ties.append(s / (total + 1))
    if not afters:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty, empty.double()
    return (
        torch.stack(afters),
        torch.tensor(slots, dtype=torch.long, device=dev),
        torch.tensor(ties, dtype=torch.float64, device=dev),
    )
