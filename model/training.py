"""One training step of Flowception or a baseline, shared by every trainer.

``training_step(net, videos, lengths, method=..., generator=...)``:
draw the training law (spec E4-E12, or a baseline's), build noisy frames and targets
(E1, E2), pack the visible frames (section 6), run the network once, and return the
losses (E13-E15) with statistics a trainer logs (visible-frame fraction, tokens, rate
diagnostics). ``net`` is a ``DiT`` or anything with its call signature (e.g. a
DeepSpeed engine wrapping one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowception.model.baselines import autoregressive_times, full_sequence_times
from flowception.model.config import MethodConfig
from flowception.model.losses import LossOutput, combine, poisson_nll, velocity_loss
from flowception.model.packing import Packed, pack, pack_index
from flowception.model.path import interpolate, velocity_target
from flowception.model.schedule import TrainingTimes, sample_training_times

TIME_LAWS = {
    "flowception": sample_training_times,
    "full_sequence": full_sequence_times,
    "autoregressive": autoregressive_times,
}


@dataclass(frozen=True)
class StepOutput:
    """Losses (tensors, ``loss.total`` is what to backpropagate) and float statistics."""

    loss: LossOutput
    stats: dict[str, float]
    times: TrainingTimes
    index: Packed


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: Tensor, normal: bool) -> Tensor:
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def training_step(
    net,
    videos: Tensor,
    lengths: Tensor,
    *,
    method: MethodConfig,
    generator: torch.Generator,
    labels: Tensor | None = None,
    rate_head: str = "exp",
) -> StepOutput:
    """Losses of one batch.

    Args:
        net: callable ``net(x, t, cu_seqlens, is_context=, labels=) -> ModelOutput``.
        videos: ``[B, F, C, H, W]`` clean frames in ``[-1, 1]``, anything beyond ``lengths``.
        lengths: ``[B]`` int64 valid frames per video.
        method: the method config (which law, ``w_ins``, dropout, task).
        generator: the only source of randomness (CPU or the videos' device).
        labels: ``[B]`` int64 class labels, ``-1`` = none.
        rate_head: ``exp`` or ``softplus`` (spec E16), for E14.
    """
    if videos.dim() != 5:
        raise ValueError(f"videos: expected [B, F, C, H, W], got {tuple(videos.shape)}")
    b, f = videos.shape[:2]
    if lengths.shape != (b,):
        raise ValueError(f"lengths: expected [{b}], got {tuple(lengths.shape)}")
    lengths = lengths.to(generator.device)

    # [1] training law (spec E4-E12 or a baseline's)
    times = TIME_LAWS[method.method](lengths, f, method, generator)

    # [2] noisy frames and targets (E1, E2); context frames are (nearly) clean (spec 4.6)
    x1 = videos.float()
    x0 = _rand(tuple(x1.shape), generator, x1, normal=True)
    eps = _rand(tuple(x1.shape), generator, x1, normal=True)
    t = times.t.to(x1.device)
    xt = interpolate(x0, x1, t)  # (B, F, C, H, W)
    c = method.context_noise
    clean = (1.0 - c) * x1 + c * eps if c > 0 else x1
    xt = torch.where(times.is_context.to(x1.device)[..., None, None, None], clean, xt)
    u = velocity_target(x0, x1)

    # [3] pack visible frames (spec section 6); condition dropout (spec section 9)
    index = pack_index(times.visible.to(x1.device))
    drop = _rand((b,), generator, x1, normal=False) < method.cond_drop_prob  # (B,)
    is_ctx = pack(times.is_context.to(x1.device), index) & ~drop[index.video]
    if labels is not None:
        labels = torch.where(drop, torch.full_like(labels, -1), labels.to(x1.device))
    out = net(pack(xt, index), pack(t, index), index.cu_seqlens, is_context=is_ctx, labels=labels)

    # [4] losses (E13-E15), each frame weighted by its video's E8w weight
    vmask = pack(times.velocity_mask.to(x1.device), index)
    rmask = pack(times.rate_mask.to(x1.device), index)
    weight = times.loss_weight.to(x1.device)[index.video]  # (n,)
    l_vel = velocity_loss(out.velocity, pack(u, index), vmask, weight)
    k = pack(times.k.to(x1.device), index)
    if method.method == "flowception":
        l_ins = poisson_nll(out.rate_logit, k, rmask, rate_head, weight=weight)
    else:
        l_ins = torch.zeros((), device=x1.device)
    loss = combine(l_vel, l_ins, method.w_ins if method.method == "flowception" else 0.0)
    return StepOutput(
        loss=loss,
        stats={
            **_stats(times, index, out.rate.detach(), vmask, rmask),
            **rate_calibration_sums(
                out.rate.detach(), k, rmask, weight, _task_masks(times, index, method)
            ),
        },
        times=times,
        index=index,
    )


def _task_masks(times: TrainingTimes, index: Packed, method: MethodConfig) -> dict[str, Tensor]:
    """``[n]`` bool per task: a video is ``method.task`` when it has context frames, else
    ``unconditional`` (``method.uncond_prob`` mixes both into one batch)."""
    has_ctx = times.is_context.any(1).to(index.video.device)[index.video]  # (n,)
    if method.task == "unconditional":
        return {"unconditional": torch.ones_like(has_ctx)}
    return {method.task: has_ctx, "unconditional": ~has_ctx}


@torch.no_grad()
def rate_calibration_sums(
    rate: Tensor, k: Tensor, rate_mask: Tensor, weight: Tensor, tasks: dict[str, Tensor]
) -> dict[str, float]:
    """Sums behind ``diag/rate_calibration`` = sum lambda / sum k over rate-masked frames,
    per task; each frame counts with its E8w weight, the weighting under which E14's
    optimum is ``lambda = E[k]``, so a calibrated head gives 1.

    Args:
        rate: ``[n]`` predicted ``lambda``.
        k: ``[n]`` insertion targets (E10).
        rate_mask: ``[n]`` bool, E12.
        weight: ``[n]`` E8w weights of the frames' videos.
        tasks: ``[n]`` bool mask per task name.

    Returns:
        ``rate_lambda_sum/<task>`` and ``rate_k_sum/<task>`` for each task with rate frames.
    """
    m = rate_mask.float() * weight.float()  # (n,)
    out: dict[str, float] = {}
    for task, sel in tasks.items():
        ms = m * sel.float()
        if float(ms.sum()) > 0:
            out[f"rate_lambda_sum/{task}"] = float((rate.float() * ms).sum())
            out[f"rate_k_sum/{task}"] = float((k.float() * ms).sum())
    return out


@torch.no_grad()
def _stats(
    times: TrainingTimes, index: Packed, rate: Tensor, vmask: Tensor, rmask: Tensor
) -> dict[str, float]:
    """Visible-frame fraction and the insertion diagnostics of a batch."""
    valid = float(times.valid.sum())
    visible = float(index.num_frames)
    stats = {
        "valid_frames": valid,
        "visible_frames": visible,
        "visible_fraction": visible / max(valid, 1.0),
        "velocity_mask_share": float(vmask.float().mean()) if visible else 0.0,
        "rate_mask_share": float(rmask.float().mean()) if visible else 0.0,
        "data_length_mean": valid / times.valid.shape[0],
    }
    # expected final length: visible frames plus the rates of the frames that still insert
    per_video = torch.zeros(index.num_videos, device=rate.device).index_add_(
        0, index.video, torch.where(rmask, rate.float(), torch.zeros_like(rate.float()))
    )
    counts = (index.cu_seqlens[1:] - index.cu_seqlens[:-1]).float()
    stats["expected_length_mean"] = float((counts + per_video).mean())
    flowing = rate[vmask].float()
    if flowing.numel():
        q = torch.quantile(flowing, torch.tensor([0.1, 0.5, 0.9], device=flowing.device))
        stats.update(
            rate_mean=float(flowing.mean()),
            rate_p10=float(q[0]),
            rate_p50=float(q[1]),
            rate_p90=float(q[2]),
        )
    return stats


CALIBRATION_BAND = (0.9, 1.1)  # issue 17: warn outside this band late in training
CALIBRATION_TAIL = 0.1  # ... in the last 10% of the steps


def rate_calibration(sums: dict[str, float]) -> dict[str, float]:
    """``diag/rate_calibration`` (every task) and ``diag/rate_calibration/<task>`` from the
    ``rate_lambda_sum/<task>`` and ``rate_k_sum/<task>`` stats summed over a log window.

    A task whose ``k`` sum is 0 (no missing frame in the window) gets no ratio.
    """
    tasks = sorted(key.split("/", 1)[1] for key in sums if key.startswith("rate_lambda_sum/"))
    out: dict[str, float] = {}
    lam_all = k_all = 0.0
    for task in tasks:
        lam, k = sums[f"rate_lambda_sum/{task}"], sums.get(f"rate_k_sum/{task}", 0.0)
        lam_all, k_all = lam_all + lam, k_all + k
        if k > 0:
            out[f"diag/rate_calibration/{task}"] = lam / k
    if k_all > 0:
        out["diag/rate_calibration"] = lam_all / k_all
    return out


def calibration_warnings(metrics: dict[str, float], step: int, total_steps: int) -> list[str]:
    """Messages for each ``diag/rate_calibration*`` outside ``CALIBRATION_BAND`` once
    ``step`` is in the last ``CALIBRATION_TAIL`` of ``total_steps``; empty before that."""
    if step < (1.0 - CALIBRATION_TAIL) * total_steps:
        return []
    lo, hi = CALIBRATION_BAND
    return [
        f"step {step}/{total_steps}: {key}={value:.3f} outside [{lo}, {hi}]: the rate head "
        f"{'over' if value > hi else 'under'}-predicts missing frames, so generated lengths "
        "will be biased; train longer or lower the learning rate"
        for key, value in sorted(metrics.items())
        if key.startswith("diag/rate_calibration") and not lo <= value <= hi
    ]
