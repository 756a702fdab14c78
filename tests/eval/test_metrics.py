"""VBench-style metrics: exact values on hand-made videos, behaviour on static / noise /
moving videos, the I3D proxy of subject consistency, VBench's frame stride."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowception.eval.metrics import (
    consistency_score,
    dynamic_degree,
    dynamic_degree_score,
    interpolate_midframe,
    motion_smoothness,
    subject_consistency_i3d,
    temporal_flickering,
    vbench_stride,
)
from tests.eval.conftest import read_video

RNG = np.random.default_rng(0)
STATIC = np.repeat(RNG.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), 16, axis=0)
NOISE = RNG.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)


def _translating(shift: float, frames: int = 16, side: int = 64) -> np.ndarray:
    """A smooth pattern translating ``shift`` pixels per frame to the right."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    video = [127 + 100 * np.sin((xx - shift * t) / 6.0) * np.cos(yy / 7.0) for t in range(frames)]
    return np.repeat(np.stack(video).astype(np.uint8)[..., None], 3, axis=-1)  # (T, H, W, 3)


def test_flickering_exact_values():
    assert temporal_flickering(STATIC) == 1.0
    video = np.zeros((3, 8, 8, 3), np.uint8)
    video[1] = 51  # |diff| = 51 on both pairs
    assert temporal_flickering(video) == pytest.approx((255 - 51) / 255)
    assert temporal_flickering(NOISE) < 0.75  # E|U - U'| = 255/3 for uniform noise
    with pytest.raises(ValueError, match="needs >= 2 frames"):
        temporal_flickering(STATIC[:1])


def test_motion_smoothness_static_smooth_noise():
    assert motion_smoothness(STATIC) == 1.0
    smooth = motion_smoothness(_translating(2.0))
    noise = motion_smoothness(NOISE)
    assert smooth > 0.99 and noise < 0.8 and smooth > noise
    # The flow-warped middle frame beats plain averaging on real motion.
    v = _translating(3.0).astype(np.float32)
    flow_err = np.abs(interpolate_midframe(v[0].astype(np.uint8), v[2].astype(np.uint8)) - v[1])
    avg_err = np.abs(0.5 * (v[0] + v[2]) - v[1])
    assert flow_err.mean() < 0.5 * avg_err.mean()


def test_dynamic_degree_static_noise_and_translation():
    static = dynamic_degree(STATIC)
    assert not static.is_dynamic and (static.pair_scores == 0).all()
    assert static.threshold == pytest.approx(6.0 * 64 / 256) and static.count_needed == 4
    noise = dynamic_degree(NOISE)
    assert noise.is_dynamic and (noise.pair_scores > noise.threshold).all()
    moving = dynamic_degree(_translating(3.0))
    # Farneback recovers the 3 px shift of a smooth pattern (top 5% of magnitudes).
    assert moving.is_dynamic and np.median(moving.pair_scores) == pytest.approx(3.0, rel=0.25)
    slow = dynamic_degree(_translating(0.5))
    assert not slow.is_dynamic  # 0.5 px/frame < 1.5 px threshold at 64 px
    assert dynamic_degree_score([static, noise, moving, slow]) == 0.5
    assert len(dynamic_degree(NOISE, stride=2).pair_scores) == 7


def test_vbench_stride_keeps_about_8_fps():
    assert [vbench_stride(f) for f in (None, 4, 8, 24, 25, 30, 60)] == [1, 1, 1, 3, 3, 4, 8]
    with pytest.raises(ValueError, match="fps=0"):
        vbench_stride(0)


def test_consistency_score_hand_cases():
    assert consistency_score(np.ones((5, 3))) == pytest.approx(1.0)
    e1, e2 = np.eye(2)
    # f = [e1, e2, e1]: t=1 -> (0 + 0) / 2, t=2 -> (0 + 1) / 2; mean 0.25.
    assert consistency_score(np.stack([e1, e2, e1])) == pytest.approx(0.25)
    # Negative cosines are clamped to 0.
    assert consistency_score(np.stack([e1, -e1])) == 0.0
    with pytest.raises(ValueError, match="expected"):
        consistency_score(np.ones(3))


def test_subject_consistency_i3d_proxy_with_real_i3d(i3d_weights: Path):
    from flowception.eval.i3d import I3DFeatureExtractor

    extractor = I3DFeatureExtractor(i3d_weights, size=112)
    a = read_video("carphone_pristine.mp4", num_frames=16, side=112)
    b = read_video("bikes.mp4", num_frames=16, side=112)
    cut = np.concatenate([a[:8], b[8:]])  # the subject changes half-way
    static = np.repeat(a[:1], 16, axis=0)
    scores = subject_consistency_i3d(extractor, np.stack([static, a, cut]))
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert scores[1] > scores[2] + 0.01, scores
