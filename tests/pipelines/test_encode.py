"""VAE latents: the codec of each kind (tiny real diffusers VAEs, random weights, saved with
``save_pretrained``), the ``data encode`` job on a Ray actor pool (local and moto S3,
bad samples counted, resumable), and the reader on latent shards."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flowception.pipelines import schema
from flowception.pipelines.decode import centre_crop_resize, decode_mp4, encode_mp4
from flowception.pipelines.encode import EncodeJob, encode_in_process, plan, run_encode
from flowception.pipelines.latents import (
    VaeCodec,
    check_training_data,
    save_random_vae,
    vae_sha256,
)
from flowception.pipelines.samples import read_samples
from flowception.pipelines.shards import ShardWriter, read_bytes
from flowception.pipelines.sources import moving_mnist

from .conftest import data_cfg

GOOD = 9  # good clips in the source shards (3 per shard), plus 2 bad samples


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    return {k: save_random_vae(k, str(root / k)) for k in ("image", "video")}


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    """16x16 Moving MNIST, 2-7 frames, 3 shards of 3 good clips, one undecodable MP4 and
    one sample without a video among them."""
    out = tmp_path_factory.mktemp("pixels") / "train"
    with ShardWriter(str(out), max_samples=4, meta={"size": 16}) as w:
        for i, clip in enumerate(moving_mnist(GOOD, size=16, min_frames=2, max_frames=7, seed=3)):
            t, h, wd, _ = clip.frames.shape
            meta = schema.SampleMeta(clip.fps, t, h, wd, clip.source, label=clip.label)
            w.add(clip.key, encode_mp4(clip.frames, clip.fps), meta)
            if i == 1:
                w.add("bad_mp4", b"\x00not an mp4" * 40, meta)
            if i == 5:
                w.add_members("no_video", [("no_video.json", meta.to_json())])
    return out


def _source_videos(src) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(src.glob("*.tar")):
        for s in read_samples(path.read_bytes()):
            if s.skip is None and s.key != "bad_mp4":
                out[s.key] = centre_crop_resize(decode_mp4(s.parts["mp4"], channels=1), 16)
    return out


def _latents(base: str, storage=None) -> dict[str, tuple[np.ndarray, dict]]:
    from flowception.pipelines.shards import list_shards

    out = {}
    for shard in list_shards(base, storage):
        for s in read_samples(read_bytes(shard.url, storage), schema.LATENT_EXT):
            assert s.skip is None, s.detail
            z = np.load(io.BytesIO(s.parts["npy"]), allow_pickle=False)
            out[s.key] = (z, json.loads(s.parts["json"]))
    return out


# --------------------------------------------------------------------------- #
#                                 The codec                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "kind, frames, latent_frames, side, decoded",
    [("image", 6, 6, 8, 6), ("video", 6, 3, 4, 5), ("video", 7, 4, 4, 7)],
)
def test_codec_shapes_follow_the_length_law(vaes, kind, frames, latent_frames, side, decoded):
    """Image VAE: one latent frame per frame. Video VAE (r = 2): T -> 1 + (T - 1) // 2
    latent frames, decoded back to 1 + (T' - 1) * 2 frames."""
    codec = VaeCodec(kind, vaes[kind], "cpu")
    video = np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 1), dtype=np.uint8)
    z = codec.encode(video)
    assert z.shape == (latent_frames, 4, side, side) and z.dtype == np.float32
    assert codec.info.latent_frames(frames) == latent_frames
    assert codec.info.video_frames(latent_frames) == decoded
    x = codec.decode(z)
    assert x.shape == (decoded, 1, 16, 16) and float(x.abs().max()) <= 1.0
    assert codec.decode_uint8(z).shape == (decoded, 16, 16, 1)


def test_codec_latents_are_the_normalised_posterior_mean(vaes):
    import torch

    codec = VaeCodec("image", vaes["image"], "cpu")
    video = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        mean = codec.vae.encode(x).latent_dist.mean
    np.testing.assert_allclose(codec.encode(video), mean.numpy() * 0.5, rtol=1e-5, atol=1e-6)


def test_vae_identity_is_its_bytes_not_its_path(vaes, tmp_path):
    copy = shutil.copytree(vaes["image"], tmp_path / "copy")
    assert vae_sha256(str(copy)) == vae_sha256(vaes["image"])
    other = save_random_vae("image", str(tmp_path / "other"), seed=1)  # same config, new weights
    assert vae_sha256(other) != vae_sha256(vaes["image"])


def test_bad_vae_or_size_fails_before_any_work(vaes, pixels, tmp_path):
    job = EncodeJob(src=str(pixels), out=str(tmp_path / "out"), vae_dir=vaes["image"], size=16)
    with pytest.raises(FileNotFoundError, match=r"VAE directory '.*nowhere': no config.json"):
        plan(replace(job, vae_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="holds a AutoencoderKL; VAE kind 'video'"):
        plan(replace(job, vae_kind="video"))
    with pytest.raises(ValueError, match="--size 17: not divisible by the VAE's spatial"):
        plan(replace(job, size=17))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- #
#                               The encode job                                #
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def encoded(ray_local, vaes, pixels, tmp_path_factory):
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    out = tmp_path_factory.mktemp("latents") / "train"
    job = EncodeJob(src=str(pixels), out=str(out), vae_dir=vaes["image"], size=16)
    return job, run_encode(job, actors=2)


def test_encode_job_writes_latent_shards_with_their_index(encoded, vaes, pixels):
    job, result = encoded
    index = result["index"]
    meta = index["meta"]
    assert meta["kind"] == "latents" and meta["latent_channels"] == 4
    assert meta["latent_size"] == [8, 8] and meta["temporal_compression"] == 1
    assert meta["vae"]["sha256"] == vae_sha256(vaes["image"]) and meta["vae"]["kind"] == "image"
    assert meta["counts"] == {"ok": GOOD, "bad_video": 1, "missing_video": 1}
    assert index["num_samples"] == GOOD and len(result["encoded"]) == 3
    codec = VaeCodec("image", vaes["image"], "cpu")
    latents = _latents(job.out)
    videos = _source_videos(pixels)
    assert sorted(latents) == sorted(videos)
    for key, (z, js) in latents.items():
        assert z.dtype == np.float16 and z.shape == (videos[key].shape[0], 4, 8, 8)
        np.testing.assert_allclose(z, codec.encode(videos[key]), atol=2e-3, rtol=2e-3)
        assert js["latent_shape"] == list(z.shape) and js["num_frames"] == z.shape[0]
        assert js["video_frames"] == z.shape[0] and js["vae_sha256"] == meta["vae"]["sha256"]
        assert js["scaling_factor"] == 0.5 and (js["height"], js["width"]) == (8, 8)


def test_data_check_reads_latent_shards(encoded, capsys):
    """``flowception data check`` knows latent shards from index.json: every encoded clip is
    ``ok`` (the encoder already left out the bad samples) and every shard matches its index."""
    from flowception.eval.cli import main

    job, _ = encoded
    assert main(["data", "check", "--shards", job.out, "--size", "16", "--channels", "1"]) == 0
    out = capsys.readouterr().out
    assert "latent shards: 4 x 8 x 8" in out
    counts = dict(line.split() for line in out.splitlines() if line.startswith(" "))
    assert counts == {"ok": str(GOOD)}
    assert "3 shard(s), 0 differ from index.json" in out


def test_encode_job_resumes_where_it_stopped(encoded, vaes):
    """A shard whose done record is missing (killed before it) or whose bytes no longer
    match it is encoded again; verified shards are skipped (their bytes untouched); the
    index lists the same shards (re-encoded latents may differ in the last float16 bit:
    thread counts differ between an actor and this process)."""
    job, first = encoded
    out = job.out
    before = {p: open(f"{out}/{p}", "rb").read() for p in ("shard-000000.tar", "index.json")}
    (Path(out) / "shard-000001.tar.done.json").unlink()
    with open(f"{out}/shard-000002.tar", "r+b") as f:  # damaged after it was recorded
        f.write(b"junk")
    again = encode_in_process(job)
    assert again["encoded"] == ["shard-000001.tar", "shard-000002.tar"]
    index, before_index = again["index"], first["index"]
    assert index["meta"] == before_index["meta"]
    assert [(s["name"], s["num_samples"]) for s in index["shards"]] == [
        (s["name"], s["num_samples"]) for s in before_index["shards"]
    ]
    assert index["shards"][0] == before_index["shards"][0]  # skipped: the same bytes
    assert open(f"{out}/shard-000000.tar", "rb").read() == before["shard-000000.tar"]
    assert run_encode(job)["encoded"] == []  # nothing left: Ray is not even needed
    other = save_random_vae("image", f"{out}-vae2", seed=2)
    with pytest.raises(ValueError, match="written with VAE sha256 .* encode into a new --out"):
        plan(EncodeJob(src=job.src, out=out, vae_dir=other, size=16))


def test_reader_yields_latent_batches_in_the_frame_budget(encoded, ray_data):
    from flowception.pipelines.ingest import worker_stream

    job, _ = encoded
    latents = _latents(job.out)
    cfg = data_cfg(job.out, vae="image", vae_dir=job.vae_dir, size=16, num_frames=6,
                   frame_budget=12, clip_start="first")  # fmt: skip
    seen = 0
    for batch in worker_stream(cfg, None, rank=0, world=1):
        assert batch.videos.shape[2:] == (4, 8, 8) and batch.num_frames <= 12
        for b, key in enumerate(batch.keys):
            z = latents[key][0][:6]  # (T', c, h, w) cut to num_frames from frame 0
            n = int(batch.lengths[b])
            assert n == z.shape[0]
            np.testing.assert_array_equal(batch.videos[b, :n].numpy(), z.astype(np.float32))
            assert not batch.videos[b, n:].any()
        seen += len(batch.keys)
    assert seen == GOOD


def test_model_and_vae_are_checked_against_the_latent_index(encoded, vaes, tmp_path):
    job, _ = encoded
    cfg = data_cfg(job.out, vae="image", vae_dir=job.vae_dir, size=16)
    assert check_training_data(cfg, 4, (8, 8)).vae_sha256 == vae_sha256(vaes["image"])
    cases = [
        (cfg, 1, (8, 8), "model.in_channels=1: .* latents with 4 channels"),
        (cfg, 4, (16, 16), r"model.frame_size=\[16, 16\]: .* latents of 8x8"),
        (cfg.replace(vae="none", vae_dir=None), 4, (8, 8), "holds latents of an 'image' VAE"),
        (cfg.replace(vae="video"), 4, (8, 8), "data.vae='video': .* an 'image' VAE"),
        (cfg.replace(vae_dir=vaes["video"]), 4, (8, 8), "VAE sha256 .* differs"),
        (cfg.replace(vae_dir=str(tmp_path / "gone")), 4, (8, 8), "no config.json"),
    ]
    for data, channels, size, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            check_training_data(data, channels, size)
    pixels = data_cfg(job.src, vae="image", vae_dir=job.vae_dir, size=16)
    with pytest.raises(ValueError, match="holds pixel shards"):
        check_training_data(pixels, 4, (8, 8))


def test_encode_to_s3_with_the_video_vae(ray_data, s3_bucket, s3_endpoint, vaes, pixels):
    from flowception.pipelines.ingest import worker_stream
    from flowception.pipelines.shards import Storage

    job = EncodeJob(src=str(pixels), out=f"{s3_bucket}/lat/train", vae_dir=vaes["video"],
                    vae_kind="video", size=16, s3_endpoint=s3_endpoint)  # fmt: skip
    index = run_encode(job, actors=1)["index"]
    assert index["meta"]["temporal_compression"] == 2 and index["meta"]["latent_size"] == [4, 4]
    latents = _latents(job.out, Storage(endpoint_url=s3_endpoint))
    videos = _source_videos(pixels)
    for key, (z, js) in latents.items():
        t = videos[key].shape[0]
        assert z.shape == (1 + (t - 1) // 2, 4, 4, 4)  # T' latent frames for T video frames
        assert js["video_frames"] == 1 + (z.shape[0] - 1) * 2
    cfg = data_cfg(job.out, vae="video", vae_dir=job.vae_dir, size=16, num_frames=4,
                   frame_budget=8, min_frames=1)  # fmt: skip
    batches = list(worker_stream(cfg, None, rank=0, world=1))
    assert sum(len(b.keys) for b in batches) == GOOD
    assert all(b.videos.shape[2:] == (4, 4, 4) for b in batches)
