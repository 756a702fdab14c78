"""VBench-style video metrics that need no downloaded weights, and the frame stride VBench uses.

Every per-video function takes one uint8 video ``(T, H, W, C)`` (C = 3 RGB or 1 grey)
and returns a float in ``[0, 1]`` (higher = more stable / smoother / more consistent),
except :func:`dynamic_degree`, which returns a :class:`DynamicDegree`. The eval job logs
each under a name that says how it was computed: ``vbench/`` only when the number is
VBench's own computation (formula and network), ``proxy/`` when a stand-in replaces
VBench's network (VBench: Huang et al. 2024, https://github.com/Vchitect/VBench).

- ``vbench/temporal_flickering``: VBench's formula, ``(255 - mean |f_{t+1} - f_t|) / 255``
  (no network; VBench applies it to videos it first filters as static);
- ``proxy/motion_smoothness_farneback``: VBench interpolates the odd frames from the even
  ones with AMT and scores ``(255 - mean |interp - real|) / 255``; here the interpolator
  is classical: Farneback flow from ``f_{2k}`` to ``f_{2k+2}``, both neighbours
  backward-warped half-way along it and averaged;
- ``proxy/dynamic_degree_farneback``: VBench's decision rule (per frame pair the mean of
  the top 5% flow magnitudes; a video is dynamic when at least ``round(4 * T' / 16)``
  pairs exceed ``6 * min(H, W) / 256`` pixels, on frames at stride ``round(fps / 8)``)
  with OpenCV Farneback flow instead of RAFT. It measures the fraction of videos whose
  Farneback flow is large in enough pairs; Farneback reports large flow on i.i.d. noise,
  so noise counts as dynamic, and it differs from RAFT on large displacements in both
  directions: it is neither a bound on nor an estimate of VBench's number;
- ``proxy/subject_consistency_i3d``: VBench's consistency formula (mean over ``t > 0`` of
  the average of ``max(0, cos)`` to the previous and to the first frame) on per-frame
  I3D ``Mixed_5c`` features instead of DINO. Those are post-ReLU and nearly collinear
  (about 0.93-1.0 for any input; pure noise scores above some real clips), so the number
  only ranks videos coarsely.

VBench's own subject / background consistency and aesthetic quality (DINO, CLIP, LAION
head) are in :mod:`eval.vbench`,
computed when ``EvalConfig.vbench_weights`` gives their weights (:data:`WEIGHTED_DIMENSIONS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from flowception.eval.vbench import DIMENSIONS, NOT_IMPLEMENTED

if TYPE_CHECKING:
    from flowception.eval.i3d import I3DFeatureExtractor

WEIGHTED_DIMENSIONS = DIMENSIONS
"""Dimensions ``EvalConfig.vbench_weights`` may name (computed with VBench's network)."""
UNAVAILABLE_DIMENSIONS = NOT_IMPLEMENTED
"""Weight-needing VBench dimensions this project does not compute, with the reason."""

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2)


def _check_video(video: np.ndarray, min_frames: int) -> np.ndarray:
    v = np.asarray(video)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] not in (1, 3):
        raise ValueError(f"video: expected uint8 (T, H, W, C), got {v.dtype} {v.shape}")
    if v.shape[0] < min_frames:
        raise ValueError(f"video: needs >= {min_frames} frames, got {v.shape[0]}")
    return v


def _grey(frame: np.ndarray) -> np.ndarray:
    return frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow from frame ``a`` to frame ``b`` (uint8 ``(H, W, C)``) -> ``(H, W, 2)`` pixels.

    Identical frames get exactly zero flow (Farneback returns ~0.02 px on flat noise).
    """
    if np.array_equal(a, b):
        return np.zeros((*a.shape[:2], 2), np.float32)
    return cv2.calcOpticalFlowFarneback(_grey(a), _grey(b), None, flags=0, **FARNEBACK)


# ----------------------------------------------------------------------------- flicker, smoothness


def temporal_flickering(video: np.ndarray) -> float:
    """VBench temporal flickering: ``(255 - mean_t mean_pixels |f_{t+1} - f_t|) / 255``."""
    v = _check_video(video, 2).astype(np.float32)
    mean_diff = np.abs(v[1:] - v[:-1]).mean()
    return float((255.0 - mean_diff) / 255.0)


def interpolate_midframe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The frame half-way between ``a`` and ``b`` (uint8 ``(H, W, C)``), by flow warping.

    With ``F`` the Farneback flow ``a -> b``, ``mid(y) = (a(y - F(y)/2) + b(y + F(y)/2)) / 2``
    (bilinear sampling, borders replicated). Returns float32 ``(H, W, C)``.
    """
    flow = farneback_flow(a, b)  # (H, W, 2)
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    half = 0.5 * flow
    warp = dict(interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wa = cv2.remap(a, gx - half[..., 0], gy - half[..., 1], **warp).reshape(a.shape)
    wb = cv2.remap(b, gx + half[..., 0], gy + half[..., 1], **warp).reshape(b.shape)
    return 0.5 * (wa.astype(np.float32) + wb.astype(np.float32))  # (H, W, C)


def motion_smoothness(video: np.ndarray) -> float:
    """``(255 - mean |interp(f_{2k}, f_{2k+2}) - f_{2k+1}|) / 255`` over all odd frames."""
    v = _check_video(video, 3)
    errors = [
        np.abs(interpolate_midframe(v[t - 1], v[t + 1]) - v[t].astype(np.float32)).mean()
        for t in range(1, v.shape[0] - 1, 2)
    ]
    return float((255.0 - np.mean(errors)) / 255.0)


# ----------------------------------------------------------------------------- dynamic degree


@dataclass(frozen=True, kw_only=True)
class DynamicDegree:
    """VBench's dynamic-degree decision for one video."""

    is_dynamic: bool
    """At least ``count_needed`` frame pairs move more than ``threshold``."""
    pair_scores: np.ndarray
    """``(T' - 1,)`` mean of the top 5% flow magnitudes of each consecutive pair (pixels)."""
    threshold: float
    """``6 * min(H, W) / 256`` pixels."""
    count_needed: int
    """``round(4 * T' / 16)``, at least 1."""


def dynamic_degree(video: np.ndarray, *, stride: int = 1) -> DynamicDegree:
    """Whether a video moves, by VBench's rule on Farneback flow.

    Args:
        video: uint8 ``(T, H, W, C)``.
        stride: Use every ``stride``-th frame (VBench: :func:`vbench_stride` of the fps).

    Returns:
        The decision with the per-pair scores.
    """
    if stride < 1:
        raise ValueError(f"stride={stride}: must be >= 1")
    v = _check_video(video, 2)[::stride]  # (T', H, W, C)
    if len(v) < 2:
        raise ValueError(f"video: needs >= 2 frames after stride={stride}")
    scores = []
    for a, b in zip(v[:-1], v[1:]):
        mag = np.linalg.norm(farneback_flow(a, b), axis=-1).ravel()  # (H*W,)
        cut = max(1, int(mag.size * 0.05))
        scores.append(float(np.sort(mag)[-cut:].mean()))
    threshold = 6.0 * min(v.shape[1:3]) / 256.0
    needed = max(1, round(4 * len(v) / 16.0))
    pair_scores = np.asarray(scores)
    return DynamicDegree(
        is_dynamic=bool((pair_scores > threshold).sum() >= needed),
        pair_scores=pair_scores,
        threshold=threshold,
        count_needed=needed,
    )


def vbench_stride(fps: float | None) -> int:
    """VBench's dynamic-degree frame stride ``round(fps / 8)`` (about 8 fps), at least 1;
    1 when the frame rate is unknown."""
    if fps is None:
        return 1
    if not fps > 0:
        raise ValueError(f"fps={fps!r}: must be > 0")
    return max(1, round(fps / 8))


def dynamic_degree_score(results: Sequence[DynamicDegree]) -> float:
    """The dimension score: the fraction of dynamic videos."""
    if not results:
        raise ValueError("dynamic_degree_score: no videos")
    return float(np.mean([r.is_dynamic for r in results]))


# ----------------------------------------------------------------------------- consistency


def consistency_score(features: np.ndarray | torch.Tensor) -> float:
    """VBench's subject/background consistency of per-frame features ``(T, D)``.

    ``mean_{t>0} (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2``.
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (T >= 2, D), got {tuple(f.shape)}")
    f = torch.nn.functional.normalize(f, dim=1)  # (T, D)
    prev = (f[1:] * f[:-1]).sum(dim=1).clamp(min=0)  # (T-1,)
    first = (f[1:] * f[:1]).sum(dim=1).clamp(min=0)  # (T-1,)
    return float(((prev + first) / 2).mean())


def subject_consistency_i3d(
    extractor: I3DFeatureExtractor, videos: np.ndarray, *, endpoint: str = "Mixed_5c"
) -> np.ndarray:
    """Proxy subject consistency from I3D frame features: ``(B, T, H, W, C)`` uint8 -> ``(B,)``."""
    feats = extractor.frame_features(videos, endpoint=endpoint)  # (B, T, C_endpoint)
    return np.array([consistency_score(f) for f in feats])
