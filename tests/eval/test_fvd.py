"""FVD: the Fréchet distance by maths, the streaming statistics, clip selection, the cache,
and the behaviour of FVD with the real I3D on real clips (self ~0, monotone in corruption).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowception.eval.config import FVDProtocol
from flowception.eval.fvd import (
    FeatureStats,
    Gaussian,
    accumulate,
    frechet_distance,
    fvd_from_stats,
    gaussian_from_features,
    load_reference,
    reference_uri,
    save_reference,
    select_clips,
)
from flowception.eval.i3d import I3DFeatureExtractor
from tests.eval.conftest import read_video

# ----------------------------------------------------------------------------- maths


def test_frechet_matches_closed_form_on_diagonal_covariances():
    rng = np.random.default_rng(0)
    d = 50
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    # Diagonal case: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(m1, np.diag(a), m2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(m2, np.diag(b), m1, np.diag(a)) == pytest.approx(expected, rel=1e-10)


def test_frechet_one_dimensional_and_zero_cases():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    g = gaussian_from_features(x)
    assert abs(frechet_distance(g.mean, g.cov, g.mean, g.cov)) < 1e-9
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_numpy_in_any_split():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=5.0, size=(101, 6))  # an offset mean stresses the update
    one = FeatureStats().update(x).gaussian()
    parts = [FeatureStats().update(x[:1]), FeatureStats().update(x[1:40]), FeatureStats()]
    parts[2].update(x[40:77]).update(x[77:])
    merged = parts[0].merge(parts[1]).merge(parts[2]).gaussian()
    for g in (one, merged):
        np.testing.assert_allclose(g.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(g.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
        assert g.count == 101
    with pytest.raises(ValueError, match="need >= 2"):
        FeatureStats().update(x[:1]).gaussian()
    with pytest.raises(ValueError, match="dim 5 added to stats of dim 6"):
        FeatureStats().update(x).update(x[:, :5])


# ----------------------------------------------------------------------------- clips


def _indexed_videos(lengths: list[int]) -> list[np.ndarray]:
    """Videos whose pixel value is the frame index, so a clip shows where it started."""
    return [
        np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, 4, 4, 3))
        for t in lengths
    ]


def test_short_clips_are_skipped_and_counted_never_padded():
    protocol = FVDProtocol(num_frames=16)
    videos = _indexed_videos([16, 15, 40, 3, 20])
    sel = select_clips(videos, protocol, role="fake", rng=np.random.default_rng(0))
    assert sel.skipped == 2 and sel.indices == (0, 2, 4)
    assert sel.clips.shape == (3, 16, 4, 4, 3)
    # Generated clips start at frame 0.
    assert (sel.clips[:, :, 0, 0, 0] == np.arange(16)).all()
    none = select_clips(
        _indexed_videos([5, 6]), protocol, role="real", rng=np.random.default_rng(0)
    )
    assert none.skipped == 2 and none.clips.shape == (0, 16, 4, 4, 3)


def test_real_clips_are_consecutive_at_random_offsets():
    protocol = FVDProtocol(num_frames=16)
    videos = _indexed_videos([64] * 200)
    sel = select_clips(videos, protocol, role="real", rng=np.random.default_rng(0))
    starts = sel.clips[:, 0, 0, 0, 0].astype(int)
    assert (sel.clips[:, :, 0, 0, 0] == starts[:, None] + np.arange(16)).all()
    assert starts.min() == 0 and starts.max() == 48  # every offset 0 .. T - 16 is possible
    again = select_clips(videos, protocol, role="real", rng=np.random.default_rng(0))
    assert (again.clips == sel.clips).all()  # seeded
    mixed = [videos[0], np.zeros((20, 8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"videos\[1\]: uint8 \(20, 8, 8, 3\)"):
        select_clips(mixed, protocol, role="real", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="role='gen'"):
        select_clips(videos, protocol, role="gen", rng=np.random.default_rng(0))


def test_result_carries_protocol_and_non_standard_flag():
    rng = np.random.default_rng(3)
    g = gaussian_from_features(rng.normal(size=(10, 4)))
    protocol = FVDProtocol()
    res = fvd_from_stats(g, g, protocol, detector_sha256="ab" * 32, skipped_fake=3)
    assert res.non_standard and res.fvd == pytest.approx(0.0, abs=1e-9)
    assert res.metrics()["fvd2048_16f/skipped_fake"] == 3.0
    params = res.params()
    assert params["fvd.protocol_hash"] == protocol.hash() and params["fvd.non_standard"] is True
    assert params["fvd.protocol.num_frames"] == 16
    small = FVDProtocol(num_real=10, num_fake=10)
    assert not fvd_from_stats(g, g, small, detector_sha256="ab" * 32).non_standard


# ----------------------------------------------------------------------------- cache


def _check_cache_round_trip(root: str) -> None:
    protocol, sha = FVDProtocol(num_real=32), "c" * 64
    stats = gaussian_from_features(np.random.default_rng(4).normal(size=(32, 5)))
    uri = reference_uri(root, "val", protocol, sha)
    assert protocol.hash() in uri and uri.endswith(".npz")
    assert load_reference(uri, protocol, detector_sha256=sha) is None
    save_reference(uri, stats, protocol, detector_sha256=sha, skipped=2)
    loaded, skipped = load_reference(uri, protocol, detector_sha256=sha)
    assert skipped == 2 and loaded.count == 32
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    with pytest.raises(ValueError, match=f"{uri}: computed with protocol {protocol.hash()}"):
        load_reference(uri, FVDProtocol(num_real=64), detector_sha256=sha)
    with pytest.raises(ValueError, match=f"{uri}: computed with"):
        load_reference(uri, protocol, detector_sha256="d" * 64)


def test_reference_cache_local(tmp_path: Path):
    _check_cache_round_trip(str(tmp_path / "refs"))


def test_reference_cache_s3(s3_bucket: str):
    _check_cache_round_trip(f"{s3_bucket}/refs")


# ----------------------------------------------------------------------------- real I3D


@pytest.fixture(scope="module")
def real_clips() -> np.ndarray:
    """47 real 16-frame clips (64x64) cut every 10 frames from three sample videos."""
    clips = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        video = read_video(name, side=64)
        clips += [video[s : s + 16] for s in range(0, len(video) - 15, 10)]
    return np.stack(clips)  # (47, 16, 64, 64, 3)


def _fvd(extractor: I3DFeatureExtractor, ref: Gaussian, clips: np.ndarray) -> float:
    g = gaussian_from_features(extractor.features(clips))
    return frechet_distance(ref.mean, ref.cov, g.mean, g.cov)


@pytest.mark.slow
def test_fvd_real_i3d_self_zero_and_monotone(extractor_64: I3DFeatureExtractor, real_clips):
    """Reduced 64x64 input (speed); the 224 protocol size is checked in test_i3d."""
    stats = FeatureStats()
    protocol = FVDProtocol(num_frames=16, real_offset="start")
    skipped = accumulate(
        stats, extractor_64.features, [*real_clips, real_clips[0][:10]], protocol,
        role="real", rng=np.random.default_rng(0),
    )  # fmt: skip
    assert skipped == 1 and stats.count == len(real_clips)
    ref = stats.gaussian()
    scale = np.trace(ref.cov)
    assert abs(_fvd(extractor_64, ref, real_clips)) < 1e-4 * scale

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(real_clips.shape).astype(np.float32)
    noisy = [
        _fvd(extractor_64, ref, np.clip(real_clips + s * noise, 0, 255).astype(np.uint8))
        for s in (8.0, 40.0)
    ]
    assert 0.01 * scale < noisy[0] < noisy[1], noisy

    shuffled = []
    for k in (4, 16):  # permute k of the 16 frames of every clip
        clips = real_clips.copy()
        for i in range(len(clips)):
            idx = np.arange(16)
            chosen = rng.choice(16, k, replace=False)
            idx[chosen] = np.roll(chosen, 1)  # a derangement of the chosen frames
            clips[i] = real_clips[i][idx]
        shuffled.append(_fvd(extractor_64, ref, clips))
    assert 0.01 * scale < shuffled[0] < shuffled[1], shuffled
