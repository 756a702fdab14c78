"""Typed, frozen, validated configuration of evaluation: the FVD protocol and the eval run.

``FVDProtocol`` pins how an FVD number is computed (StyleGAN-V's ``fvd2048_16f`` by
default, spec section 12); its :meth:`FVDProtocol.hash` keys cached reference
statistics and is logged with every number. ``EvalConfig`` is the ``eval`` branch of the
config tree (composed in ``cluster/``). Both round-trip through ``to_dict()`` /
``from_dict()`` and reject unknown keys.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from flowception.config import Config
from flowception.eval.assets import DEFAULT_I3D_PATH

Offset = Literal["random", "start"]
MetricName = Literal[
    "fvd",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "subject_consistency",
    "length",
]
ALL_METRICS: tuple[str, ...] = get_args(MetricName)


class FVDProtocol(Config):
    """How real and generated clips become the two Gaussians of FVD (spec section 12)."""

    name: str = "fvd2048_16f"
    """Label logged as a param; metric keys come from the clip counts actually used
    (``eval.fvd.metric_key``: ``fvd64_16f`` for 64 and 64 clips)."""
    num_frames: int = 16
    """Consecutive frames per clip; shorter videos are skipped and counted, never padded."""
    num_real: int = 2048
    """Real clips in the reference statistics."""
    num_fake: int = 2048
    """Generated clips."""
    resolution: int = 224
    """Frames are resized to ``resolution x resolution`` inside the extractor."""
    real_offset: Offset = "random"
    """Where a real clip starts in its video: uniformly at random, or at frame 0."""
    fake_offset: Offset = "start"
    """Where a generated clip starts (``fvd2048_16f``: frame 0)."""
    seed: int = 0
    """Seed of the random real-clip offsets."""
    covariance: Literal["n", "n-1"] = "n"
    """Covariance normalisation: ``n`` as StyleGAN-V's ``FeatureStats.get_mean_cov``, or ``n-1``."""

    @model_validator(mode="after")
    def _check(self) -> FVDProtocol:
        for name in ("num_frames", "num_real", "num_fake", "resolution"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FVDProtocol.{name}={value!r}: must be an integer >= 1")
        if self.num_frames < 9:
            # The Logits pooling of I3D needs two time steps after the /8 temporal stride.
            raise ValueError(f"FVDProtocol.num_frames={self.num_frames}: I3D needs >= 9")
        if self.resolution < 32:
            raise ValueError(f"FVDProtocol.resolution={self.resolution}: must be >= 32")
        return self

    def hash(self) -> str:
        """16 hex digits of the sha256 of the canonical JSON of every field."""
        return self.identity_hash(16)

    def is_standard(self, num_real: int, num_fake: int) -> bool:
        """Whether a result used at least the protocol's sample counts."""
        return num_real >= self.num_real and num_fake >= self.num_fake


class EvalConfig(Config):
    """One evaluation run: detector, protocol, metrics and where cached statistics live."""

    detector: str = DEFAULT_I3D_PATH
    """I3D weights: ``flowception assets i3d`` output or a TorchScript detector; path or s3://."""
    detector_sha256: str | None = None
    """Expected sha256 of ``detector``; default: the one in its ``.json`` sidecar."""
    protocol: FVDProtocol = Field(default_factory=FVDProtocol)
    """The FVD protocol."""
    reference_cache: str | None = None
    """Directory / URI prefix for cached reference statistics (npz); None = no cache."""
    metrics: tuple[MetricName, ...] = ALL_METRICS
    """Metrics to compute."""
    batch_size: int = 8
    """Clips per I3D forward pass."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the extractor; ``auto`` = CUDA when available."""
    subject_endpoint: str = "Mixed_5c"
    """I3D endpoint whose per-frame features give subject consistency."""
    vbench_weights: dict[str, str] = Field(default_factory=dict)
    """Local weight files of VBench dimensions computed with VBench's network
    (``subject_consistency``: DINO ViT-B/16, ``background_consistency``: CLIP ViT-B/32,
    ``aesthetic_quality``: a directory with CLIP ViT-L/14 and the LAION head)."""
    fps: float | None = None
    """Frame rate of the eval videos: dynamic degree keeps every ``round(fps / 8)``-th frame
    as VBench does; None = every frame (the stride is logged)."""

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.metrics:
            raise ValueError(
                f"EvalConfig.metrics={self.metrics!r}: expected a non-empty subset of {ALL_METRICS}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size={self.batch_size!r}: must be an integer >= 1")
        if not self.detector:
            raise ValueError(f"EvalConfig.detector={self.detector!r}: must be a path or URI")
        if self.detector_sha256 is not None and (
            len(self.detector_sha256) != 64
            or any(c not in "0123456789abcdef" for c in self.detector_sha256.lower())
        ):
            raise ValueError(
                f"EvalConfig.detector_sha256={self.detector_sha256!r}: expected 64 hex digits"
            )
        from flowception.eval.i3d import ENDPOINTS

        if self.subject_endpoint not in ENDPOINTS[:-1]:
            raise ValueError(
                f"EvalConfig.subject_endpoint={self.subject_endpoint!r}: "
                f"expected one of {list(ENDPOINTS[:-1])}"
            )
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"EvalConfig.fps={self.fps!r}: must be > 0 (frames per second)")
        from flowception.eval.metrics import UNAVAILABLE_DIMENSIONS, WEIGHTED_DIMENSIONS

        unknown = sorted(set(self.vbench_weights) - set(WEIGHTED_DIMENSIONS))
        if unknown:
            why = "; ".join(f"{k}: {UNAVAILABLE_DIMENSIONS[k]}" for k in unknown
                            if k in UNAVAILABLE_DIMENSIONS)  # fmt: skip
            raise ValueError(
                f"EvalConfig.vbench_weights: unknown dimension(s) {unknown}"
                f"{' (' + why + ')' if why else ''}; computed: {sorted(WEIGHTED_DIMENSIONS)}"
            )
        return self
