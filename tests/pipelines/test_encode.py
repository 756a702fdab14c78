"""Latent stage: identity encoder on an actor pool, latent shards written and read back."""

from __future__ import annotations

import io

import numpy as np

from flowception.pipelines.dataset import build_dataset
from flowception.pipelines.encode import LatentEncoder, encode_dataset, write_latent_shards
from flowception.pipelines.samples import read_samples
from flowception.pipelines.shards import list_shards

from .conftest import NUM_VIDEOS, data_cfg


def test_identity_encoder_maps_pixels_to_minus_one_one():
    enc = LatentEncoder("identity")
    video = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    z = enc.encode(video)
    assert z.shape == (2, 1, 4, 4) and z.dtype == np.float16
    assert z[0].max() == -1.0 and z[1].min() == 1.0


def test_encoded_shards_round_trip(ray_data, mnist_dir, tmp_path):
    cfg = data_cfg(mnist_dir, encoder="identity", shuffle=False)
    encoded = encode_dataset(build_dataset(cfg), cfg, actors=1)
    index = write_latent_shards(encoded, str(tmp_path / "latents"), max_samples=5)
    assert index["num_samples"] == NUM_VIDEOS
    assert [s["num_samples"] for s in index["shards"]] == [5, 5, 2]
    originals = {}
    for batch in build_dataset(cfg).iter_batches(batch_size=None, batch_format="numpy"):
        for key, video in zip(batch["key"], batch["video"]):
            originals[str(key)] = video
    for shard in list_shards(str(tmp_path / "latents")):
        for s in read_samples(open(shard.url, "rb").read()):
            assert s.skip == "missing_video"  # no mp4: the video reader skips latent shards
            z = np.load(io.BytesIO(s.parts["npy"]))
            video = originals[s.key]  # (T, H, W, C)
            assert z.shape == (video.shape[0], 1, 32, 32)
            np.testing.assert_allclose(
                z.astype(np.float32), video.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-2
            )
