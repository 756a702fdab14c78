"""VBench-style video metrics that need no downloaded weights, and a registry for those that do.

Every per-video function takes one uint8 video ``(T, H, W, C)`` (C = 3 RGB or 1 grey)
and returns a float in ``[0, 1]`` (higher = more stable / smoother / more consistent),
except :func:`dynamic_degree`, which returns a :class:`DynamicDegree`; the dimension
score over a set of videos is the mean (for dynamic degree: the fraction of dynamic
videos), as in VBench (Huang et al. 2024, https://github.com/Vchitect/VBench).

- temporal flickering: VBench's formula, ``(255 - mean |f_{t+1} - f_t|) / 255``;
- motion smoothness: VBench interpolates the odd frames from the even ones with AMT
  and scores ``(255 - mean |interp - real|) / 255``; here the interpolator is
  classical: Farneback flow from ``f_{2k}`` to ``f_{2k+2}``, both neighbours
  backward-warped half-way along it and averaged;
- dynamic degree: VBench's rule with OpenCV Farneback flow instead of RAFT (per pair
  the mean of the top 5% flow magnitudes; a video is dynamic when at least
  ``round(4 * T / 16)`` pairs exceed ``6 * min(H, W) / 256`` pixels). Farneback
  underestimates large displacements relative to RAFT, so the fraction is a lower bound;
- subject consistency: VBench's formula on per-frame features (mean over ``t > 0`` of
  the average of ``max(0, cos)`` to the previous and to the first frame), here with
  per-frame I3D features (``I3DFeatureExtractor.frame_features``) instead of DINO.

The weight-needing dimensions (imaging / aesthetic quality, background consistency, DINO
subject consistency) are in :data:`WEIGHTED_DIMENSIONS`; :func:`load_dimension` builds
one from a user-given weights path (never downloaded): a TorchScript file following the
contract below, or any Python loader added with :func:`register_loader`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from flowception.eval.i3d import I3DFeatureExtractor

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
        stride: Use every ``stride``-th frame (VBench samples about 8 fps).

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


def subject_consistency(
    extractor: I3DFeatureExtractor, videos: np.ndarray, *, endpoint: str = "Mixed_5c"
) -> np.ndarray:
    """Subject consistency of a batch ``(B, T, H, W, C)`` uint8 -> ``(B,)`` scores."""
    feats = extractor.frame_features(videos, endpoint=endpoint)  # (B, T, C_endpoint)
    return np.array([consistency_score(f) for f in feats])


# ----------------------------------------------------------------------------- weighted dims


@dataclass(frozen=True, kw_only=True)
class WeightedDimension:
    """A VBench dimension that needs weights the user provides."""

    name: str
    """Key in :data:`WEIGHTED_DIMENSIONS` and in ``EvalConfig.vbench_weights``."""
    kind: Literal["frame_score", "frame_embedding"]
    """What the TorchScript returns per frame: a score in [0, 1] (averaged) or an
    embedding (scored by :func:`consistency_score`)."""
    vbench_model: str
    """The network VBench uses, for the user to export."""


WEIGHTED_DIMENSIONS: dict[str, WeightedDimension] = {
    d.name: d
    for d in (
        WeightedDimension(
            name="imaging_quality", kind="frame_score", vbench_model="MUSIQ (SPAQ), score / 100"
        ),
        WeightedDimension(
            name="aesthetic_quality",
            kind="frame_score",
            vbench_model="LAION aesthetic predictor on CLIP ViT-L/14, score / 10",
        ),
        WeightedDimension(
            name="background_consistency",
            kind="frame_embedding",
            vbench_model="CLIP ViT-B/32 image embeddings",
        ),
        WeightedDimension(
            name="subject_consistency_dino",
            kind="frame_embedding",
            vbench_model="DINO ViT-B/16 embeddings",
        ),
    )
}
VideoScorer = Callable[[np.ndarray], float]
_LOADERS: dict[str, Callable[[str], VideoScorer]] = {}


def register_loader(name: str, loader: Callable[[str], VideoScorer]) -> None:
    """Use ``loader(weights_path) -> (video -> score)`` for dimension ``name``."""
    if name not in WEIGHTED_DIMENSIONS:
        raise ValueError(f"dimension {name!r}: expected one of {sorted(WEIGHTED_DIMENSIONS)}")
    _LOADERS[name] = loader


def load_dimension(name: str, weights: str | Path, *, device: str = "cpu") -> VideoScorer:
    """A per-video scorer for a weight-needing dimension, from a local weights path.

    Without a registered loader, ``weights`` is a TorchScript module taking float32
    ``(T, 3, H, W)`` RGB in ``[0, 1]`` (it resizes and normalises itself) and returning
    ``(T,)`` scores (``frame_score``) or ``(T, D)`` embeddings (``frame_embedding``).

    Raises:
        ValueError: Unknown dimension.
        FileNotFoundError: ``weights`` does not exist (nothing is downloaded).
    """
    if name not in WEIGHTED_DIMENSIONS:
        raise ValueError(f"dimension {name!r}: expected one of {sorted(WEIGHTED_DIMENSIONS)}")
    if not Path(weights).exists():
        raise FileNotFoundError(f"{weights}: weights for {name!r} not found (never downloaded)")
    if name in _LOADERS:
        return _LOADERS[name](str(weights))
    module = torch.jit.load(str(weights), map_location=device).eval()
    kind = WEIGHTED_DIMENSIONS[name].kind

    @torch.inference_mode()
    def score(video: np.ndarray) -> float:
        v = _check_video(video, 2)
        x = torch.from_numpy(v).to(device).permute(0, 3, 1, 2).float() / 255.0  # (T, C, H, W)
        out = module(x.expand(-1, 3, -1, -1))
        if kind == "frame_score":
            return float(out.reshape(-1).double().mean())
        return consistency_score(out.reshape(v.shape[0], -1).cpu())  # (T, D)

    return score
