"""DataConfig: validation names the field and value, round trip, endpoint resolution."""

from __future__ import annotations

import pytest

from flowception.pipelines.config import DataConfig


def test_defaults_round_trip():
    cfg = DataConfig(shards="s3://bucket/train", size=32, channels=3, seed=7)
    again = DataConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.is_s3 and not DataConfig().is_s3


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="frames_per_clip"):
        DataConfig.from_dict({"frames_per_clip": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_frames", 0),
        ("frame_stride", -1),
        ("size", 33),
        ("channels", 2),
        ("clip_start", "middle"),
        ("frame_budget", 4),
        ("min_frames", 99),
        ("seed", -3),
        ("shards", ""),
        ("decode_workers", True),
    ],
)
def test_invalid_values_name_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        DataConfig(**{field: value})
    assert f"DataConfig.{field}={value!r}" in str(err.value)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_vae_needs_a_path(kind):
    with pytest.raises(ValueError, match="DataConfig.vae_dir=None"):
        DataConfig(vae=kind)
    with pytest.raises(ValueError, match="DataConfig.vae_dir='/m'"):
        DataConfig(vae_dir="/m")  # a VAE directory without a kind: pixel shards
    with pytest.raises(ValueError, match="vae_sha256='abc'"):
        DataConfig(vae=kind, vae_dir="/m", vae_sha256="abc")


def test_endpoint_from_config_then_env(monkeypatch):
    monkeypatch.delenv("FLOWCEPTION_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env:1")
    assert DataConfig().endpoint_url() == "http://aws-env:1"
    monkeypatch.setenv("FLOWCEPTION_S3_ENDPOINT", "http://ours:2")
    assert DataConfig().endpoint_url() == "http://ours:2"
    assert DataConfig(s3_endpoint_url="http://cfg:3").endpoint_url() == "http://cfg:3"
