"""FVD: StyleGAN-V's estimator reproduced, the Fréchet distance by maths, input checks,
metric keys that carry the protocol run, reference points, clip selection, the cache, and
FVD with the real I3D on real clips (monotone in corruption).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from flowception.eval.config import FVDProtocol
from flowception.eval.fvd import (
    FeatureStats,
    Gaussian,
    Reference,
    accumulate,
    frechet_distance,
    fvd_from_stats,
    gaussian_from_features,
    load_reference,
    metric_key,
    real_floor,
    reference_uri,
    save_reference,
    select_clips,
    static_clips,
)
from flowception.eval.i3d import I3DFeatureExtractor
from tests.eval.conftest import read_video

SHA = "ab" * 32

# ----------------------------------------------------------------------------- StyleGAN-V


def _stylegan_v_fvd(real: np.ndarray, gen: np.ndarray) -> float:
    """StyleGAN-V's published FVD, re-derived here in float64 from its formula:
    ``mu = sum(x) / n``, ``sigma = x^T x / n - mu mu^T`` (FeatureStats.get_mean_cov), then
    ``|mu_g - mu_r|^2 + Tr(sigma_g + sigma_r - 2 sqrtm(sigma_g sigma_r))`` (compute_fvd)."""

    def mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x64 = np.asarray(x, np.float32).astype(np.float64)
        mu = x64.sum(axis=0) / len(x64)
        return mu, x64.T @ x64 / len(x64) - np.outer(mu, mu)

    mu_r, s_r = mean_cov(real)
    mu_g, s_g = mean_cov(gen)
    root, _ = scipy.linalg.sqrtm(s_g @ s_r, disp=False)
    return float(np.real(np.square(mu_g - mu_r).sum() + np.trace(s_g + s_r - 2 * root)))


@pytest.mark.parametrize("n, d", [(300, 24), (40, 64)], ids=["n>d", "n<d"])
def test_default_fvd_equals_stylegan_v_estimator(n: int, d: int):
    rng = np.random.default_rng(n)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    real = (rng.normal(size=(n, d)) @ mix + 3.0).astype(np.float32)
    gen = (rng.normal(size=(n + 7, d)) @ (mix + 0.3 * np.eye(d)) + 2.5).astype(np.float32)
    expected = _stylegan_v_fvd(real, gen)
    got = fvd_from_stats(
        gaussian_from_features(real), gaussian_from_features(gen), FVDProtocol(),
        detector_sha256=SHA,
    ).fvd  # fmt: skip
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=1e-6)
    # the unbiased covariance is a different number (1.5% at 64 clips, issue 19)
    unbiased = fvd_from_stats(
        gaussian_from_features(real, "n-1"), gaussian_from_features(gen, "n-1"),
        FVDProtocol(covariance="n-1"), detector_sha256=SHA,
    ).fvd  # fmt: skip
    assert abs(unbiased - expected) > 1e-4 * expected


# ----------------------------------------------------------------------------- maths


def test_frechet_matches_closed_form_on_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 50
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    # Commuting case: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2, in any common eigenbasis.
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    c1, c2 = (c1 + c1.T) / 2, (c2 + c2.T) / 2
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(m2, c2, m1, c1) == pytest.approx(expected, rel=1e-8)


def test_frechet_one_dimensional():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    assert frechet_distance([0.0], [[1.0]], [0.0], [[0.25]]) == pytest.approx(0.25)


def test_streaming_stats_equal_numpy_in_any_split():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=5.0, size=(101, 6))  # an offset mean stresses the update
    one = FeatureStats().update(x).gaussian("n-1")
    parts = [FeatureStats().update(x[:1]), FeatureStats().update(x[1:40]), FeatureStats()]
    parts[2].update(x[40:77]).update(x[77:])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for g in (one, merged.gaussian("n-1")):
        np.testing.assert_allclose(g.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(g.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
        assert g.count == 101
    biased = merged.gaussian()  # default: StyleGAN-V's 1/n
    np.testing.assert_allclose(biased.cov, np.cov(x, rowvar=False, bias=True), rtol=1e-10)
    assert biased.covariance == "n"


# ----------------------------------------------------------------------------- input checks


def test_frechet_rejects_bad_inputs_before_sqrtm():
    d = 400
    eye, zero = np.eye(d), np.zeros(d)
    nan_cov = eye.copy()
    nan_cov[3, 7] = nan_cov[7, 3] = np.nan
    with pytest.raises(ValueError, match="second Gaussian: covariance has 2 non-finite"):
        frechet_distance(zero, eye, zero, nan_cov)
    with pytest.raises(ValueError, match="first Gaussian: mean has 1 non-finite"):
        frechet_distance(np.r_[np.inf, zero[1:]], eye, zero, eye)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"mean \(3,\) and covariance \(3, 4\)"):
        frechet_distance(np.zeros(3), np.zeros((3, 4)), np.zeros(3), np.eye(3))
    skew = np.eye(3)
    skew[0, 1] = 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(np.zeros(3), skew, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="non-negative diagonal"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_feature_stats_reject_bad_features_and_too_few_clips():
    x = np.random.default_rng(5).normal(size=(10, 6))
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value at row 4, column 2"):
        FeatureStats().update(bad)
    with pytest.raises(ValueError, match=r"expected \(n, D\)"):
        FeatureStats().update(x[0])
    with pytest.raises(ValueError, match="dim 5 added to stats of dim 6"):
        FeatureStats().update(x).update(x[:, :5])
    with pytest.raises(ValueError, match="need >= 2 feature vectors, have 1"):
        FeatureStats().update(x[:1]).gaussian()
    broken = FeatureStats().update(x)
    broken.m2[0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite statistics merged"):
        FeatureStats().update(x).merge(broken)
    with pytest.raises(ValueError, match="fitted on 1 clip"):
        Gaussian(mean=np.zeros(2), cov=np.eye(2), count=1)
    with pytest.raises(ValueError, match="covariance='n-2'"):
        FeatureStats().update(x).gaussian("n-2")
    g_n, g_n1 = gaussian_from_features(x), gaussian_from_features(x, "n-1")
    with pytest.raises(ValueError, match="real covariance 'n' != fake 'n-1'"):
        fvd_from_stats(g_n, g_n1, FVDProtocol(), detector_sha256=SHA)


def test_load_reference_rejects_non_finite_statistics(tmp_path: Path):
    protocol = FVDProtocol(num_real=8)
    g = gaussian_from_features(np.random.default_rng(6).normal(size=(8, 4)))
    uri = str(tmp_path / "ref.npz")
    save_reference(uri, Reference(gaussian=g, skipped=0, baselines={}), protocol,
                   detector_sha256=SHA)  # fmt: skip
    with np.load(uri) as data:
        fields = dict(data)
    fields["cov"] = np.full((4, 4), np.nan)
    buf = io.BytesIO()
    np.savez(buf, **fields)
    Path(uri).write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=f"{uri}: covariance has 16 non-finite.*delete"):
        load_reference(uri, protocol, detector_sha256=SHA)
    fields.pop("cov")
    buf = io.BytesIO()
    np.savez(buf, **fields)
    Path(uri).write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"missing \['cov'\]"):
        load_reference(uri, protocol, detector_sha256=SHA)


# ----------------------------------------------------------------------------- keys, baselines


def test_metric_key_names_the_clip_counts_actually_used():
    assert metric_key(64, 64, 16) == "fvd64_16f"
    assert metric_key(2048, 2048, 16) == "fvd2048_16f"
    assert metric_key(2048, 64, 16) == "fvd2048r64g_16f"
    assert metric_key(64, 64, 10, 64) == "fvd64_10f_64px"
    rng = np.random.default_rng(3)
    real = gaussian_from_features(rng.normal(size=(10, 4)))
    fake = gaussian_from_features(rng.normal(loc=1.0, size=(12, 4)))
    res = fvd_from_stats(real, fake, FVDProtocol(), detector_sha256=SHA, skipped_fake=3)
    metrics = res.metrics()
    assert "fvd2048_16f" not in metrics and res.key == "fvd10r12g_16f"
    assert metrics["fvd10r12g_16f"] == pytest.approx(
        frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    )
    assert metrics["fvd10r12g_16f/skipped_fake"] == 3.0 and res.non_standard
    params = res.params()
    assert params["fvd.key"] == "fvd10r12g_16f" and params["fvd.non_standard"] is True
    assert params["fvd.covariance"].startswith("1/n (StyleGAN-V")
    assert "trilinear resize to (T,224,224)" in params["fvd.preprocessing"]
    assert params["fvd.protocol_hash"] == FVDProtocol().hash()
    assert params["fvd.protocol.covariance"] == "n"
    small = FVDProtocol(num_real=10, num_fake=10)
    assert not fvd_from_stats(real, fake, small, detector_sha256=SHA).non_standard


def test_real_floor_compares_two_disjoint_halves():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(41, 5))
    x[20:] += 0.5  # the second half differs, so halves that overlap would read ~0
    res = real_floor(x, FVDProtocol(num_frames=10), detector_sha256=SHA, covariance="n")
    a, b = gaussian_from_features(x[:20]), gaussian_from_features(x[20:40])
    assert res.key == "fvd20_10f/real_floor"
    assert res.fvd == pytest.approx(frechet_distance(a.mean, a.cov, b.mean, b.cov), rel=1e-12)
    assert res.fvd > 1.0
    with pytest.raises(ValueError, match="3 real clips, need >= 4"):
        real_floor(x[:3], FVDProtocol(), detector_sha256=SHA, covariance="n")


def test_static_clips_repeat_the_first_frame_to_the_video_length():
    rng = np.random.default_rng(8)
    videos = [rng.integers(0, 256, (t, 4, 4, 3), dtype=np.uint8) for t in (3, 7)]
    static = static_clips(videos)
    for v, s in zip(videos, static):
        assert s.shape == v.shape and (s == v[:1]).all()


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


# ----------------------------------------------------------------------------- cache


def _check_cache_round_trip(root: str) -> None:
    protocol, sha = FVDProtocol(num_real=32), "c" * 64
    stats = gaussian_from_features(np.random.default_rng(4).normal(size=(32, 5)))
    uri = reference_uri(root, "val", protocol, sha)
    assert protocol.hash() in uri and uri.endswith(".npz")
    assert load_reference(uri, protocol, detector_sha256=sha) is None
    baselines = {"fvd16_16f/real_floor": 12.5, "fvd32_16f/static": 40.0}
    save_reference(uri, Reference(gaussian=stats, skipped=2, baselines=baselines), protocol,
                   detector_sha256=sha)  # fmt: skip
    loaded = load_reference(uri, protocol, detector_sha256=sha)
    assert loaded.skipped == 2 and loaded.gaussian.count == 32 and loaded.baselines == baselines
    np.testing.assert_array_equal(loaded.gaussian.cov, stats.cov)
    assert loaded.gaussian.covariance == "n"
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
