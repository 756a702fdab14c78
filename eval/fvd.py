"""Fréchet video distance: clip selection, Gaussian statistics, the distance, cached references.

FVD (spec section 12) is the Fréchet distance between Gaussian fits of I3D logits of
real and generated 16-frame clips::

    d^2 = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

computed in float64 with ``scipy.linalg.sqrtm`` (real part). The covariance divides by
``n`` by default, as StyleGAN-V's ``FeatureStats.get_mean_cov`` does (``covariance="n"``;
``"n-1"`` is ``np.cov``'s). The protocol (:class:`eval.config.FVDProtocol`) fixes the
clip length, the sample counts and the offsets.

Metric keys say what was run (:func:`metric_key`): ``fvd{clips}_{frames}f`` when real and
generated clip counts are equal (``fvd2048_16f`` only for 2048 and 2048),
``fvd{real}r{fake}g_{frames}f`` when they differ, plus ``_{side}px`` when frames are not
resized to 224. Reference points carry a suffix: ``<key>/real_floor`` (two disjoint halves
of the real clips, so its key has the half counts) and ``<key>/static`` (each real
video's first frame repeated). Every number validates its inputs before any ``sqrtm``.

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
Covariance = Literal["n", "n-1"]
COVARIANCE_TEXT = {
    "n": "1/n (StyleGAN-V FeatureStats.get_mean_cov)",
    "n-1": "1/(n-1) (unbiased, np.cov)",
}
MIN_CLIPS = 2
"""Fewest clips a Gaussian is fitted on (a covariance from one clip is zero)."""


def metric_key(num_real: int, num_fake: int, num_frames: int, resolution: int = 224) -> str:
    """The FVD metric key of a run: ``fvd64_16f``, ``fvd2048r64g_16f``, ``fvd64_16f_64px``.

    Args:
        num_real: Real clips the reference Gaussian was fitted on.
        num_fake: Generated clips.
        num_frames: Frames per clip.
        resolution: Side the frames were resized to before I3D (224 = the standard).
    """
    counts = f"{num_real}" if num_real == num_fake else f"{num_real}r{num_fake}g"
    key = f"fvd{counts}_{num_frames}f"
    return key if resolution == 224 else f"{key}_{resolution}px"


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
    """``(D, D)``, divided by ``n`` or ``n - 1`` (see ``covariance``)."""
    count: int
    """Number of feature vectors it was fitted on."""
    covariance: Covariance = "n"
    """Normalisation of ``cov``: ``"n"`` (StyleGAN-V) or ``"n-1"`` (``np.cov``)."""

    def __post_init__(self) -> None:
        check_gaussian(self.mean, self.cov, self.count, what="Gaussian")


class FeatureStats:
    """Streaming mean / covariance of feature vectors (Chan et al.'s pairwise update, float64).

    ``update`` per batch, ``merge`` across Ray workers, then :meth:`gaussian`.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim, self.count = dim, 0
        self.mean = None if dim is None else np.zeros(dim)
        self.m2 = None if dim is None else np.zeros((dim, dim))  # sum of centred outer products

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if mean_b.ndim != 1 or m2_b.shape != (mean_b.size, mean_b.size):
            raise ValueError(f"FeatureStats: mean {mean_b.shape} / m2 {m2_b.shape} do not match")
        if not (np.isfinite(mean_b).all() and np.isfinite(m2_b).all()):
            raise ValueError("FeatureStats: non-finite statistics merged")
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
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"features: expected (n, D) with D >= 1, got shape {x.shape}")
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"features: non-finite value at row {bad[0]}, column {bad[1]}")
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

    def gaussian(self, covariance: Covariance = "n") -> Gaussian:
        """The fitted Gaussian; needs at least :data:`MIN_CLIPS` vectors.

        Args:
            covariance: ``"n"`` divides the scatter by ``n`` (StyleGAN-V), ``"n-1"`` by ``n - 1``.
        """
        if covariance not in COVARIANCE_TEXT:
            raise ValueError(f"covariance={covariance!r}: expected one of {list(COVARIANCE_TEXT)}")
        if self.count < MIN_CLIPS or self.mean is None or self.m2 is None:
            raise ValueError(
                f"FeatureStats: need >= {MIN_CLIPS} feature vectors, have {self.count}"
            )
        denom = self.count if covariance == "n" else self.count - 1
        return Gaussian(
            mean=self.mean.copy(), cov=self.m2 / denom, count=self.count, covariance=covariance
        )


def gaussian_from_features(features: np.ndarray, covariance: Covariance = "n") -> Gaussian:
    """One-shot Gaussian fit of ``(n, D)`` features (``covariance`` as in :meth:`FeatureStats.gaussian`)."""
    return FeatureStats().update(features).gaussian(covariance)


def check_gaussian(mean: np.ndarray, cov: np.ndarray, count: int | None, *, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``mean (D,)`` / ``cov (D, D)`` are finite,
    ``cov`` is symmetric with a non-negative diagonal, and ``count >= MIN_CLIPS``.

    Costs O(D^2): it runs before every ``sqrtm`` (which can spin for many minutes on NaN).
    """
    m, c = np.asarray(mean), np.asarray(cov)
    if m.ndim != 1 or m.size == 0 or c.shape != (m.size, m.size):
        raise ValueError(f"{what}: mean {m.shape} and covariance {c.shape}: expected (D,), (D, D)")
    if not np.issubdtype(m.dtype, np.number) or not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"{what}: mean {m.dtype} / covariance {c.dtype}: expected numbers")
    if not np.isfinite(m).all():
        raise ValueError(f"{what}: mean has {int((~np.isfinite(m)).sum())} non-finite value(s)")
    if not np.isfinite(c).all():
        raise ValueError(
            f"{what}: covariance has {int((~np.isfinite(c)).sum())} non-finite value(s)"
        )
    scale = float(np.abs(c).max()) or 1.0
    if float(np.abs(c - c.T).max()) > 1e-6 * scale or float(np.diag(c).min()) < -1e-9 * scale:
        raise ValueError(f"{what}: covariance is not symmetric with a non-negative diagonal")
    if count is not None and count < MIN_CLIPS:
        raise ValueError(f"{what}: fitted on {count} clip(s), need >= {MIN_CLIPS}")


# ----------------------------------------------------------------------------- distance


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Fréchet distance between two Gaussians, in float64 (the real part of ``sqrtm``).

    ``|m1 - m2|^2 + Tr(C1 + C2 - 2 sqrtm(C1 C2))``. When ``C1 C2`` is singular and
    ``sqrtm`` returns non-finite values, ``1e-6 I`` is added to both covariances (as
    pytorch-fid does).

    Raises:
        ValueError: Shapes differ, or a mean / covariance is non-finite, not symmetric or
            has a negative variance (checked before ``sqrtm``, in O(D^2)).
    """
    check_gaussian(mean1, cov1, None, what="frechet_distance: first Gaussian")
    check_gaussian(mean2, cov2, None, what="frechet_distance: second Gaussian")
    m1, m2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if m1.shape != m2.shape:
        raise ValueError(f"frechet_distance: dimensions differ, means {m1.shape} and {m2.shape}")
    # sqrtm(C2 C1), the order of StyleGAN-V's compute_fvd (sigma_gen @ sigma_real).
    covmean = scipy.linalg.sqrtm(c2 @ c1)
    if not np.isfinite(covmean).all():
        offset = np.eye(m1.size) * 1e-6
        covmean = scipy.linalg.sqrtm((c2 + offset) @ (c1 + offset))
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
    """Generated clips (for a reference point: the clips it compares with the real ones)."""
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
    covariance: Covariance = "n"
    """Covariance normalisation of both Gaussians."""
    label: Literal["", "real_floor", "static"] = ""
    """``""`` for the model; a reference point's name otherwise."""

    @property
    def key(self) -> str:
        """Metric key: :func:`metric_key` of the counts actually used, plus ``/label``."""
        p = self.protocol
        key = metric_key(self.num_real, self.num_fake, p.num_frames, p.resolution)
        return f"{key}/{self.label}" if self.label else key

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow ``log_metrics`` (under :attr:`key`)."""
        k = self.key
        return {
            k: self.fvd,
            f"{k}/num_real": float(self.num_real),
            f"{k}/num_fake": float(self.num_fake),
            f"{k}/skipped_real": float(self.skipped_real),
            f"{k}/skipped_fake": float(self.skipped_fake),
        }

    def params(self) -> dict[str, Any]:
        """The whole protocol for MLflow ``log_params``: fields, estimator, preprocessing."""
        from flowception.eval.i3d import preprocessing_text

        out = {f"fvd.protocol.{k}": v for k, v in self.protocol.to_dict().items()}
        out.update(
            {
                "fvd.key": self.key,
                "fvd.num_real": self.num_real,
                "fvd.num_fake": self.num_fake,
                "fvd.covariance": COVARIANCE_TEXT[self.covariance],
                "fvd.features": "I3D (tf.hub i3d-kinetics-400) 400-d pre-softmax logits",
                "fvd.preprocessing": preprocessing_text(self.protocol.resolution),
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
    label: Literal["", "real_floor", "static"] = "",
) -> FVDResult:
    """FVD of two fitted Gaussians under ``protocol`` (flags runs with too few samples).

    Raises:
        ValueError: The Gaussians use different covariance normalisations, or one is invalid.
    """
    if real.covariance != fake.covariance:
        raise ValueError(
            f"fvd_from_stats: real covariance {real.covariance!r} != fake {fake.covariance!r}"
        )
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
        covariance=real.covariance,
        label=label,
    )


def real_floor(
    features: np.ndarray, protocol: FVDProtocol, *, detector_sha256: str, covariance: Covariance
) -> FVDResult:
    """FVD between two disjoint halves of the real clips' features ``(n, D)``.

    The first ``n // 2`` rows against the next ``n // 2``: what FVD reads for two samples of
    the data itself at half the clip count (its key carries the half counts).

    Raises:
        ValueError: Fewer than ``2 * MIN_CLIPS`` clips.
    """
    x = np.asarray(features)
    half = len(x) // 2
    if half < MIN_CLIPS:
        raise ValueError(f"real_floor: {len(x)} real clips, need >= {2 * MIN_CLIPS}")
    a = gaussian_from_features(x[:half], covariance)
    b = gaussian_from_features(x[half : 2 * half], covariance)
    return fvd_from_stats(a, b, protocol, detector_sha256=detector_sha256, label="real_floor")


def static_clips(videos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each video's first frame repeated to the video's length (the no-motion baseline)."""
    return [np.repeat(np.asarray(v)[:1], len(v), axis=0) for v in videos]  # (T_i, H, W, C)


# ----------------------------------------------------------------------------- reference cache


@dataclass(frozen=True, kw_only=True)
class Reference:
    """Cached statistics of the real clips and the reference points computed with them."""

    gaussian: Gaussian
    """Gaussian of the real clips' features."""
    skipped: int
    """Real videos shorter than the clip."""
    baselines: dict[str, float]
    """Metrics of :func:`real_floor` and the static baseline (``FVDResult.metrics()``)."""


def reference_uri(root: str, split: str, protocol: FVDProtocol, detector_sha256: str) -> str:
    """Where the reference statistics of a dataset split live under ``root`` (dir or URI)."""
    name = f"{split}-{protocol.hash()}-{detector_sha256[:12]}.npz"
    return f"{str(root).rstrip('/')}/{name}"


def save_reference(
    uri: str, ref: Reference, protocol: FVDProtocol, *, detector_sha256: str
) -> None:
    """Write reference statistics (npz: mean, cov, count, protocol hash, detector sha, baselines)."""
    import json

    g = ref.gaussian
    buf = io.BytesIO()
    np.savez(
        buf,
        mean=g.mean,
        cov=g.cov,
        count=np.int64(g.count),
        covariance=np.str_(g.covariance),
        skipped=np.int64(ref.skipped),
        baselines=np.str_(json.dumps(ref.baselines)),
        protocol_hash=np.str_(protocol.hash()),
        detector_sha256=np.str_(detector_sha256),
    )
    write_bytes(uri, buf.getvalue())


def load_reference(uri: str, protocol: FVDProtocol, *, detector_sha256: str) -> Reference | None:
    """Cached reference statistics, or None when ``uri`` does not exist.

    Raises:
        ValueError: The file was computed under another protocol or detector (names both),
            lacks a field, or holds non-finite / mis-shaped statistics or too few clips.
    """
    import json

    if not uri_exists(uri):
        return None
    with np.load(io.BytesIO(read_bytes(uri))) as data:
        missing = {"mean", "cov", "count", "covariance", "skipped", "baselines",
                   "protocol_hash", "detector_sha256"} - set(data.files)  # fmt: skip
        if missing:
            raise ValueError(f"{uri}: missing {sorted(missing)}; delete it to recompute")
        found = (str(data["protocol_hash"]), str(data["detector_sha256"]))
        if found != (protocol.hash(), detector_sha256):
            raise ValueError(
                f"{uri}: computed with protocol {found[0]} / detector {found[1][:12]}, "
                f"expected {protocol.hash()} / {detector_sha256[:12]}"
            )
        mean, cov, count = data["mean"], data["cov"], int(data["count"])
        try:
            check_gaussian(mean, cov, count, what=uri)
            gaussian = Gaussian(mean=mean, cov=cov, count=count, covariance=str(data["covariance"]))
        except ValueError as exc:
            raise ValueError(f"{exc}; delete {uri} to recompute") from None
        baselines = json.loads(str(data["baselines"]))
        return Reference(gaussian=gaussian, skipped=int(data["skipped"]), baselines=baselines)
