"""Small real shards for the data tests: 32x32 Moving MNIST, 3-9 frames, a few videos."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from flowception.pipelines import schema
from flowception.pipelines.config import DataConfig
from flowception.pipelines.decode import encode_mp4
from flowception.pipelines.sources import moving_mnist, write_clips

NUM_VIDEOS = 12
SAMPLES_PER_SHARD = 4


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """12 variable-length Moving MNIST videos in 3 project-written shards (+ index.json)."""
    out = tmp_path_factory.mktemp("mnist") / "train"
    clips = moving_mnist(NUM_VIDEOS, size=32, min_frames=3, max_frames=9, seed=1)
    write_clips(clips, str(out), max_samples=SAMPLES_PER_SHARD, meta={"test": True})
    return out


def data_cfg(shards: str | Path, **overrides) -> DataConfig:
    """A test ``DataConfig``: 32x32 grayscale, up to 6 frames, budget 12."""
    base = dict(
        shards=str(shards),
        size=32,
        channels=1,
        num_frames=6,
        min_frames=2,
        frame_budget=12,
        max_batch_size=8,
        decode_workers=2,
    )
    base.update(overrides)
    return DataConfig(**base)


def tiny_mp4(frames: int = 4, value: int = 200, size: int = 32) -> bytes:
    """A real MP4 of ``frames`` flat grayscale frames."""
    video = np.full((frames, size, size, 1), value, dtype=np.uint8)
    return encode_mp4(video, 10.0)


def meta_json(frames: int = 4, size: int = 32, **extra) -> bytes:
    """A valid ``{key}.json``."""
    return schema.SampleMeta(10.0, frames, size, size, "test", **extra).to_json()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar file holding ``members`` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def ray_data(ray_local):
    """The session's Ray, with Ray Data's progress bars off (quiet test logs)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray_local
