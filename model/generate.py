"""Generate videos with a trained network, for Flowception and both baselines.

``generate(net, method=..., num_videos=..., generator=...)`` wraps the DiT into the
sampler's callable (spec section 8), sets up guidance (section 9) and the context
frames of the task (section 10), and dispatches on ``method.method``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from flowception.model.baselines import sample_autoregressive, sample_full_sequence
from flowception.model.config import MethodConfig
from flowception.model.sampler import Context, Guidance, SampleOutput, sample


def velocity_field(net: nn.Module, labels: Tensor | None, *, drop_context: bool = False):
    """The sampler's callable ``fn(x, t, cu_seqlens, is_context=None) -> (velocity, rate)``.

    ``labels`` is per video ``[B]`` (the samplers keep ``B`` fixed in ``cu_seqlens``).
    ``drop_context`` zeroes the context stream (the unconditional branch, spec E20).
    """

    def fn(x: Tensor, t: Tensor, cu_seqlens: Tensor, is_context: Tensor | None = None):
        if labels is not None and labels.numel() != cu_seqlens.numel() - 1:
            raise ValueError(f"labels: {labels.numel()} given for {cu_seqlens.numel() - 1} videos")
        ctx = None if drop_context else is_context
        out = net(x, t, cu_seqlens, is_context=ctx, labels=labels)
        return out.velocity.float(), out.rate.float()

    return fn


@torch.no_grad()
def generate(
    net: nn.Module,
    *,
    method: MethodConfig,
    num_videos: int,
    generator: torch.Generator,
    frame_shape: tuple[int, int, int] | None = None,
    labels: Tensor | None = None,
    context: Sequence[Tensor] | None = None,
    num_steps: int | None = None,
    max_frames: int | None = None,
    num_frames: int | Sequence[int] | None = None,
    target_lengths: Sequence[int] | None = None,
    return_trace: bool = False,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """Sample ``num_videos`` videos in ``[-1, 1]`` (list of ``[F_b, C, H, W]``).

    Args:
        net: a ``DiT`` (its ``cfg`` gives the frame shape when ``frame_shape`` is None).
        method: which sampler and its settings (steps, cap, guidance, insertion rule).
        num_videos: ``B``.
        generator: source of all randomness.
        labels: ``[B]`` class labels (``-1`` = unconditional).
        context: per video clean context frames ``[c_b, C, H, W]`` (first frame for
            image-to-video, keyframes for interpolation, prefix for continuation).
        num_steps, max_frames: override ``method.num_steps`` / ``method.max_frames``.
        num_frames: length(s) for the fixed-length baselines (default ``method.num_frames``).
        target_lengths: ``L*`` for prescribed insertion orders (E25).
        return_trace: also return lengths per iteration and frame birth iterations.
    """
    cfg = getattr(net, "cfg", None)
    if frame_shape is None:
        if cfg is None:
            raise ValueError("frame_shape is required when net has no .cfg")
        frame_shape = (cfg.in_channels, *cfg.frame_size)
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        ctx = Context(frames=list(context)) if context is not None else None
        steps = num_steps or method.num_steps
        uncond_labels = None if labels is None else torch.full_like(labels, -1)
        uncond = velocity_field(net, uncond_labels, drop_context=True)  # E20's null branch
        if method.method == "flowception":
            guidance = Guidance(uncond, method.cfg_scale, method.insertion_guidance)
            return sample(
                velocity_field(net, labels),
                num_videos=num_videos,
                frame_shape=frame_shape,
                num_steps=steps,
                num_start_frames=method.start_frames(ctx is not None),  # the law's n_s (4.1)
                max_frames=max_frames or method.max_frames,
                context=ctx,
                guidance=guidance,
                generator=generator,
                return_trace=return_trace,
                insertion=method.insertion,
                insertion_rule=method.insertion_rule,
                target_lengths=target_lengths,
                time_shift=method.time_shift,
                device=dev,
            )
        if method.task == "interpolation":
            raise ValueError(
                f"method={method.method!r}: fixed-length baselines sample with prefix context "
                "(image_to_video, continuation); task='interpolation' is Flowception-only here"
            )
        lengths = num_frames if num_frames is not None else method.num_frames
        if isinstance(lengths, int):
            lengths = [lengths] * num_videos
        fixed = sample_full_sequence if method.method == "full_sequence" else sample_autoregressive
        return fixed(
            velocity_field(net, labels),
            num_videos=num_videos,
            frame_shape=frame_shape,
            num_steps=steps,
            lengths=lengths,
            context=ctx,
            guidance=Guidance(uncond, method.cfg_scale),
            generator=generator,
            time_shift=method.time_shift,
            device=dev,
        )
    finally:
        net.train(was_training)
