"""Fréchet video distance: clip selection, Gaussian statistics, the distance, cached references.

FVD (spec section 12) is the Fréchet distance between Gaussian fits of I3D logits of
real and generated 16-frame clips::

    d^2 = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

computed in float64 with ``scipy.linalg.sqrtm`` (real part), as StyleGAN-V does. The
protocol (:class:`eval.config.FVDProtocol`) fixes the clip length, the sample counts
and the offsets; results carry the protocol, its hash and a ``non_standard`` flag.

Typical use (the eval job does the same with Ray Data)::

    from flowception.eval.fvd import FeatureStats, fvd_from_stats, select_clips
    from flowception.eval.i3d import I3DFeatureExtractor
    ex = I3DFeatureExtractor("assets/i3d_kinetics400.safetensors")
    real = FeatureStats(); sel = select_clips(videos, protocol, role="real", rng=rng)
    real.update(ex.features(sel.clips))
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg

from flowception.eval.assets import read_bytes, uri_exists, write_bytes
from flowception.eval.config import FVDProtocol

Role = Literal["real", "fake"]


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True, kw_only=True)
class ClipSelection:
    """Protocol clips cut from a list of videos."""

    clips: np.ndarray
    """uint8 ``(B', num_frames, H, W, C)``."""
    indices: tuple[int, ...]
    """Index in the input list of every kept clip."""
    skipped: int
    """Videos shorter than ``num_frames`` (skipped, never padded)."""


def select_clips(
    videos: Sequence[np.ndarray], protocol: FVDProtocol, *, role: Role, rng: np.random.Generator
) -> ClipSelection:
    """Cut one ``num_frames`` clip per video, real at a random offset, generated from frame 0.

    Args:
        videos: uint8 ``(T_i, H, W, C)`` arrays, all with the same ``H, W, C``.
        protocol: Gives ``num_frames`` and the offset rule of each role.
        role: ``"real"`` (uses ``protocol.real_offset``) or ``"fake"`` (``fake_offset``).
        rng: Draws the random offsets.

    Returns:
        The kept clips, their indices and the number of skipped (too short) videos.
    """
    if role not in ("real", "fake"):
        raise ValueError(f"role={role!r}: expected 'real' or 'fake'")
    rule = protocol.real_offset if role == "real" else protocol.fake_offset
    n = protocol.num_frames
    clips, kept = [], []
    for i, video in enumerate(videos):
        if video.shape[1:] != videos[0].shape[1:] or video.dtype != np.uint8:
            raise ValueError(
                f"videos[{i}]: {video.dtype} {video.shape}, expected uint8 (T, "
                f"{', '.join(map(str, videos[0].shape[1:]))}) like videos[0]"
            )
        t = int(video.shape[0])
        if t < n:
            continue
        start = int(rng.integers(0, t - n + 1)) if rule == "random" else 0
        clips.append(np.asarray(video[start : start + n]))  # (num_frames, H, W, C)
        kept.append(i)
    if clips:
        stacked = np.stack(clips)  # (B', num_frames, H, W, C)
    else:
        shape = videos[0].shape[1:] if len(videos) else (0, 0, 3)
        stacked = np.zeros((0, n, *shape), np.uint8)
    return ClipSelection(clips=stacked, indices=tuple(kept), skipped=len(videos) - len(kept))


def accumulate(
    stats: FeatureStats,
    features: Callable[[np.ndarray], np.ndarray],
    videos: Sequence[np.ndarray],
    protocol: FVDProtocol,
    *,
    role: Role,
    rng: np.random.Generator,
) -> int:
    """Select protocol clips from ``videos``, extract features, add them to ``stats``.

    Args:
        stats: Accumulator updated in place.
        features: uint8 ``(B, T, H, W, C)`` -> ``(B, D)``, e.g. ``I3DFeatureExtractor.features``.
        videos: uint8 ``(T_i, H, W, C)`` arrays.
        protocol: The FVD protocol.
        role: ``"real"`` or ``"fake"``.
        rng: Draws the real-clip offsets.

    Returns:
        The number of videos skipped for being shorter than ``protocol.num_frames``.
    """
    sel = select_clips(videos, protocol, role=role, rng=rng)
    if len(sel.clips):
        stats.update(features(sel.clips))
    return sel.skipped


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True, kw_only=True)
class Gaussian:
    """A Gaussian fit of features (float64)."""

    mean: np.ndarray
    """``(D,)``."""
    cov: np.ndarray
    """``(D, D)``, unbiased (``n - 1``), like ``np.cov(x, rowvar=False)``."""
    count: int
    """Number of feature vectors it was fitted on."""


class FeatureStats:
    """Streaming mean / covariance of feature vectors (Chan et al.'s pairwise update, float64).

    ``update`` per batch, ``merge`` across Ray workers, then :meth:`gaussian`.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim, self.count = dim, 0
        self.mean = None if dim is None else np.zeros(dim)
        self.m2 = None if dim is None else np.zeros((dim, dim))  # sum of centred outer products

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self.mean is None or self.m2 is None:
            self.dim, self.mean, self.m2 = (
                mean_b.shape[0],
                np.zeros_like(mean_b),
                np.zeros_like(m2_b),
            )
        if mean_b.shape != (self.dim,):
            raise ValueError(f"features of dim {mean_b.shape[0]} added to stats of dim {self.dim}")
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def update(self, features: np.ndarray) -> FeatureStats:
        """Add a batch ``(n, D)`` of features; returns self."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features: expected (n, D), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features: non-finite values")
        if len(x) == 0:
            return self
        mean_b = x.mean(axis=0)  # (D,)
        centred = x - mean_b  # (n, D)
        self._combine(len(x), mean_b, centred.T @ centred)  # (D, D)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator in (e.g. one per Ray actor); returns self."""
        if other.count and other.mean is not None and other.m2 is not None:
            self._combine(other.count, other.mean, other.m2)
        return self

    def gaussian(self) -> Gaussian:
        """The fitted Gaussian; needs at least two vectors."""
        if self.count < 2 or self.mean is None or self.m2 is None:
            raise ValueError(f"FeatureStats: need >= 2 feature vectors, have {self.count}")
        return Gaussian(mean=self.mean.copy(), cov=self.m2 / (self.count - 1), count=self.count)


def gaussian_from_features(features: np.ndarray) -> Gaussian:
    """One-shot Gaussian fit of ``(n, D)`` features."""
    return FeatureStats().update(features).gaussian()


# ----------------------------------------------------------------------------- distance


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Fréchet distance between two Gaussians, in float64 (the real part of ``sqrtm``).

    ``|m1 - m2|^2 + Tr(C1 + C2 - 2 sqrtm(C1 C2))``. When ``C1 C2`` is singular and
    ``sqrtm`` returns non-finite values, ``1e-6 I`` is added to both covariances (as
    pytorch-fid does).
    """
    m1, m2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.size, m1.size):
        raise ValueError(
            f"shapes differ: means {m1.shape} {m2.shape}, covariances {c1.shape} {c2.shape}"
        )
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():
        offset = np.eye(m1.size) * 1e-6
        covmean = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    diff = m1 - m2
    value = diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(np.real(covmean))
    return float(np.real(value))


@dataclass(frozen=True, kw_only=True)
class FVDResult:
    """An FVD number with everything needed to trust it."""

    fvd: float
    """The Fréchet distance of the two Gaussians."""
    num_real: int
    """Real clips in the reference statistics."""
    num_fake: int
    """Generated clips."""
    skipped_real: int
    """Real videos skipped for being shorter than the protocol's clip."""
    skipped_fake: int
    """Generated videos skipped for the same reason."""
    non_standard: bool
    """Fewer samples than the protocol asks for: not comparable to published numbers."""
    protocol: FVDProtocol
    """The protocol."""
    protocol_hash: str
    """``protocol.hash()``."""
    detector_sha256: str
    """sha256 of the detector weights."""

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow ``log_metrics`` (prefixed with the protocol name)."""
        p = self.protocol.name
        return {
            p: self.fvd,
            f"{p}/num_real": float(self.num_real),
            f"{p}/num_fake": float(self.num_fake),
            f"{p}/skipped_real": float(self.skipped_real),
            f"{p}/skipped_fake": float(self.skipped_fake),
        }

    def params(self) -> dict[str, Any]:
        """Protocol fields for MLflow ``log_params``."""
        out = {f"fvd.protocol.{k}": v for k, v in self.protocol.to_dict().items()}
        out.update(
            {
                "fvd.protocol_hash": self.protocol_hash,
                "fvd.non_standard": self.non_standard,
                "fvd.detector_sha256": self.detector_sha256,
            }
        )
        return out


def fvd_from_stats(
    real: Gaussian,
    fake: Gaussian,
    protocol: FVDProtocol,
    *,
    detector_sha256: str,
    skipped_real: int = 0,
    skipped_fake: int = 0,
) -> FVDResult:
    """FVD of two fitted Gaussians under ``protocol`` (flags runs with too few samples)."""
    return FVDResult(
        fvd=frechet_distance(real.mean, real.cov, fake.mean, fake.cov),
        num_real=real.count,
        num_fake=fake.count,
        skipped_real=skipped_real,
        skipped_fake=skipped_fake,
        non_standard=not protocol.is_standard(real.count, fake.count),
        protocol=protocol,
        protocol_hash=protocol.hash(),
        detector_sha256=detector_sha256,
    )


# ----------------------------------------------------------------------------- reference cache


def reference_uri(root: str, split: str, protocol: FVDProtocol, detector_sha256: str) -> str:
    """Where the reference statistics of a dataset split live under ``root`` (dir or URI)."""
    name = f"{split}-{protocol.name}-{protocol.hash()}-{detector_sha256[:12]}.npz"
    return f"{str(root).rstrip('/')}/{name}"


def save_reference(
    uri: str, stats: Gaussian, protocol: FVDProtocol, *, detector_sha256: str, skipped: int = 0
) -> None:
    """Write reference statistics (npz with mean, cov, count, protocol hash, detector sha)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        mean=stats.mean,
        cov=stats.cov,
        count=np.int64(stats.count),
        skipped=np.int64(skipped),
        protocol_hash=np.str_(protocol.hash()),
        detector_sha256=np.str_(detector_sha256),
    )
    write_bytes(uri, buf.getvalue())


def load_reference(
    uri: str, protocol: FVDProtocol, *, detector_sha256: str
) -> tuple[Gaussian, int] | None:
    """Cached reference statistics, or None when ``uri`` does not exist.

    Returns:
        ``(Gaussian, skipped)``.

    Raises:
        ValueError: The file was computed under another protocol or detector (names both).
    """
    if not uri_exists(uri):
        return None
    with np.load(io.BytesIO(read_bytes(uri))) as data:
        found = (str(data["protocol_hash"]), str(data["detector_sha256"]))
        if found != (protocol.hash(), detector_sha256):
            raise ValueError(
                f"{uri}: computed with protocol {found[0]} / detector {found[1][:12]}, "
                f"expected {protocol.hash()} / {detector_sha256[:12]}"
            )
        stats = Gaussian(mean=data["mean"], cov=data["cov"], count=int(data["count"]))
        return stats, int(data["skipped"])
