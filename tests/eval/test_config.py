"""EvalConfig / FVDProtocol: defaults are fvd2048_16f, round-trips, errors name field and value."""

from __future__ import annotations

import pytest

from flowception.eval.config import ALL_METRICS, EvalConfig, FVDProtocol


def test_default_protocol_is_stylegan_v_fvd2048_16f():
    p = FVDProtocol()
    assert (p.name, p.num_frames, p.num_real, p.num_fake, p.resolution) == (
        "fvd2048_16f",
        16,
        2048,
        2048,
        224,
    )
    assert (p.real_offset, p.fake_offset) == ("random", "start")
    assert p.is_standard(2048, 2048) and not p.is_standard(2047, 4096)


def test_protocol_hash_is_stable_and_sees_every_field():
    base = FVDProtocol()
    assert base.hash() == FVDProtocol().hash() and len(base.hash()) == 16
    variants = [
        FVDProtocol(num_frames=32),
        FVDProtocol(num_real=5000),
        FVDProtocol(num_fake=5000),
        FVDProtocol(resolution=128),
        FVDProtocol(real_offset="start"),
        FVDProtocol(fake_offset="random"),
        FVDProtocol(seed=1),
        FVDProtocol(name="other"),
        FVDProtocol(covariance="n-1"),
    ]
    hashes = {v.hash() for v in variants}
    assert len(hashes) == len(variants) and base.hash() not in hashes


def test_round_trip_and_unknown_keys():
    cfg = EvalConfig(
        protocol=FVDProtocol(num_real=64, num_fake=64),
        metrics=("fvd", "length"),
        reference_cache="s3://bucket/refs",
        vbench_weights={
            "subject_consistency": "/weights/dino_vitb16_pretrain.pth",
            "aesthetic_quality": "/weights/aesthetic",
        },
    )
    data = cfg.to_dict()
    assert data["protocol"]["num_real"] == 64 and data["metrics"] == ["fvd", "length"]
    assert EvalConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match=r"EvalConfig: unknown key 'batchsize'"):
        EvalConfig.from_dict({"batchsize": 4})
    with pytest.raises(ValueError, match=r"FVDProtocol: unknown key 'frames'"):
        EvalConfig.from_dict({"protocol": {"frames": 16}})
    assert EvalConfig().metrics == ALL_METRICS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_frames=8), "FVDProtocol.num_frames=8"),
        (dict(num_real=0), "FVDProtocol.num_real=0"),
        (dict(resolution=16), "FVDProtocol.resolution=16"),
        (dict(real_offset="middle"), "FVDProtocol.real_offset='middle'"),
    ],
)
def test_protocol_errors_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FVDProtocol(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(metrics=("fvd", "fid")), r"EvalConfig.metrics\[1\]='fid'"),
        (dict(batch_size=0), "EvalConfig.batch_size=0"),
        (dict(device="tpu"), "EvalConfig.device='tpu'"),
        (dict(detector_sha256="abc"), "EvalConfig.detector_sha256='abc'"),
        (dict(subject_endpoint="Logits"), "EvalConfig.subject_endpoint='Logits'"),
        (dict(vbench_weights={"clip_score": "/x"}), r"unknown dimension\(s\) \['clip_score'\]"),
        (dict(vbench_weights={"imaging_quality": "/x"}), r"imaging_quality: MUSIQ \(pyiqa"),
        (dict(fps=0.0), "EvalConfig.fps=0.0"),
    ],
)
def test_eval_config_errors_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**kwargs)
