"""``flowception data ...`` end to end, and the local S3 server's lifecycle."""

from __future__ import annotations

import json
import tarfile
import urllib.request

import pytest

from flowception.eval.cli import main
from flowception.pipelines.s3_local import local_s3


def test_make_shards_then_check(tmp_path, capsys):
    out = tmp_path / "mm"
    rc = main(
        [
            "data",
            "make-shards",
            "moving-mnist",
            "--out",
            str(out),
            "--size",
            "32",
            "--num-videos",
            "7",
            "--max-samples",
            "3",
            "--min-frames",
            "2",
            "--max-frames",
            "5",
        ]
    )
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    assert [s["num_samples"] for s in index["shards"]] == [3, 3, 1]
    assert index["meta"] == {"source": "moving_mnist", "split": "train", "size": 32}
    capsys.readouterr()
    assert main(["data", "check", "--shards", str(out), "--size", "32", "--channels", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x.split() for x in lines[:-2]] == [["ok", "7"]]
    assert lines[-1] == "3 shard(s), 0 differ from index.json"
    # the length law the clips hold, read here from the clips' own metadata
    frames = [
        json.load(tar.extractfile(m))["num_frames"]
        for path in sorted(out.glob("*.tar"))
        for tar in [tarfile.open(path)]
        for m in tar.getmembers()
        if m.name.endswith(".json")
    ]
    mean = sum(frames) / 7
    se = (sum((f - mean) ** 2 for f in frames) / 6 / 7) ** 0.5
    assert len(frames) == 7 and len(set(frames)) > 1, frames
    assert lines[-2] == (f"frames per ok clip: mean {mean:.2f} (standard error {se:.2f}), "
                         f"min {min(frames)}, max {max(frames)}, 7 clips")  # fmt: skip


def _shards(tmp_path, capsys):
    out = tmp_path / "mm"
    args = ["--size", "32", "--num-videos", "8", "--max-samples", "4", "--min-frames", "2"]
    assert main(["data", "make-shards", "moving-mnist", "--out", str(out), *args]) == 0
    capsys.readouterr()
    return out


def _check(out, capsys):
    rc = main(["data", "check", "--shards", str(out), "--size", "32", "--channels", "1"])
    return rc, capsys.readouterr().out


def test_check_compares_shards_with_their_index(tmp_path, capsys):
    out = _shards(tmp_path, capsys)
    (out / "shard-000000.tar").write_bytes(b"")  # emptied: its 4 indexed samples are lost
    rc, text = _check(out, capsys)
    assert rc == 1
    assert "shard-000000.tar: size_mismatch,sha256_mismatch,count_mismatch" in text
    assert {tuple(x.split()) for x in text.splitlines()} >= {("ok", "4"), ("empty_shard", "4")}

    one = out / "shard-000001.tar"
    one.write_bytes(one.read_bytes()[:12000])  # ~5 kB a sample: cut inside the 3rd
    rc, text = _check(out, capsys)
    counts = dict(x.split() for x in text.splitlines() if len(x.split()) == 2)
    lost = sum(int(counts.get(k, 0)) for k in ("truncated", "missing_from_shard"))
    assert counts["empty_shard"] == "4"
    assert int(counts["ok"]) + lost == 4 and lost >= 1  # every indexed sample is counted
    assert "shard-000001.tar: size_mismatch" in text


def test_check_names_an_index_without_shards(tmp_path, capsys):
    out = _shards(tmp_path, capsys)
    (out / "index.json").write_text(json.dumps({"format": "flowception-shards/1"}))
    assert main(["data", "check", "--shards", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.json: key 'shards' must be a list" in err[0]


def test_make_shards_to_s3(s3_bucket, s3_endpoint):
    import s3fs

    url = f"{s3_bucket}/cli"
    rc = main(
        [
            "data",
            "make-shards",
            "moving-mnist",
            "--out",
            url,
            "--size",
            "32",
            "--num-videos",
            "2",
            "--s3-endpoint",
            s3_endpoint,
        ]
    )
    assert rc == 0
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(url[5:])) == ["index.json", "shard-000000.tar"]


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["data", "check", "--shards", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
    assert main(["data", "make-shards", "folder", "--out", str(tmp_path / "x")]) == 2
    assert "--folder is required" in capsys.readouterr().err


def test_local_s3_stops_its_server():
    with local_s3() as endpoint:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5) as r:
            assert r.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)


def test_make_shards_speed_reaches_the_clips(tmp_path, capsys):
    """``--speed 0`` writes still digits (every decoded frame is frame 0, up to the codec),
    recorded in ``index.json``; the default speed moves them."""
    import numpy as np

    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import decode_rows, read_shard_rows
    from flowception.pipelines.shards import list_shards

    spread = {}
    for name, extra in (("still", ["--speed", "0"]), ("moving", [])):
        out = tmp_path / name
        args = ["--size", "32", "--num-videos", "3", "--min-frames", "8", "--max-frames", "8"]
        assert main(["data", "make-shards", "moving-mnist", "--out", str(out), *args, *extra]) == 0
        meta = json.loads((out / "index.json").read_text())["meta"]
        assert meta.get("speed") == (0.0 if extra else None)
        cfg = DataConfig(shards=str(out), size=32, channels=1, clip_start="first", shuffle=False)
        rows = read_shard_rows(cfg, list_shards(str(out))[0].url, 0, 0)
        videos = [np.asarray(v, dtype=np.float32) for v in decode_rows(rows, cfg)["video"]]
        spread[name] = max(float(np.abs(v - v[:1]).max()) for v in videos)
    capsys.readouterr()
    assert spread["still"] < 40 < spread["moving"], spread


def test_make_shards_glyphs_share_digit_images_across_splits(tmp_path, capsys):
    """``--glyphs 1``: every clip of both splits shows the first train digit image (its
    class in every label, its pixels in every still frame), recorded in ``index.json``."""
    import numpy as np

    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import decode_rows, read_shard_rows
    from flowception.pipelines.shards import list_shards
    from flowception.pipelines.sources import mnist_digits, split_digits

    _, labels = mnist_digits()
    first = int(split_digits("train")[0])
    ink = {}
    for split in ("train", "test"):
        out = tmp_path / split
        args = ["--size", "32", "--num-videos", "6", "--min-frames", "4", "--max-frames", "4",
                "--digits", "1", "--speed", "0", "--glyphs", "1", "--split", split]  # fmt: skip
        assert main(["data", "make-shards", "moving-mnist", "--out", str(out), *args]) == 0
        index = json.loads((out / "index.json").read_text())
        assert index["meta"]["glyphs"] == 1
        cfg = DataConfig(shards=str(out), size=32, channels=1, clip_start="first", shuffle=False)
        rows = read_shard_rows(cfg, list_shards(str(out))[0].url, 0, 0)
        batch = decode_rows(rows, cfg)
        assert [int(x) for x in batch["label"]] == [int(labels[first])] * 6, split
        ink[split] = sorted(float(np.asarray(v, dtype=np.float32)[0].sum()) for v in batch["video"])
    capsys.readouterr()
    # one digit image at different places: the same ink in every clip, up to the codec
    spread = max(ink["train"] + ink["test"]) / min(ink["train"] + ink["test"])
    assert spread < 1.15, ink


def test_train_vae_learns_to_reconstruct_held_out_frames(tmp_path, capsys):
    """`data train-vae` trains a real diffusers AutoencoderKL on the shards' frames: the
    held-out videos come back much closer than a blank frame, and the saved VAE is one
    `VaeCodec` loads, with latents normalised to unit standard deviation."""
    import numpy as np

    from flowception.pipelines.latents import VaeCodec
    from flowception.pipelines.vae_train import RECORD_NAME

    shards, vae = tmp_path / "mm", tmp_path / "vae"
    assert main(["data", "make-shards", "moving-mnist", "--out", str(shards), "--size", "16",
                 "--num-videos", "32", "--min-frames", "8", "--max-frames", "8", "--digits", "1",
                 "--glyphs", "2"]) == 0  # fmt: skip
    assert main(["data", "train-vae", "--shards", str(shards), "--out", str(vae), "--steps",
                 "150", "--block-channels", "8", "16", "--batch-size", "16"]) == 0  # fmt: skip
    record = json.loads((vae / RECORD_NAME).read_text())
    assert "held-out reconstruction mse" in capsys.readouterr().out
    assert record["heldout_videos"] == 2 and record["latent_shape"] == [4, 8, 8]
    assert record["heldout_recon_mse"] < 0.5 * record["heldout_blank_mse"], record
    codec = VaeCodec("image", str(vae), "cpu")
    clip = np.zeros((3, 16, 16, 1), np.uint8)
    clip[:, 4:12, 6:10] = 255
    z = codec.encode(clip)
    assert z.shape == (3, 4, 8, 8)
    assert codec.decode(z).shape == (3, 1, 16, 16)
    assert abs(record["latent_std"] * codec.info.scaling_factor - 1.0) < 1e-6


def test_train_vae_holds_out_a_video_it_does_not_train_on_when_there_are_few(tmp_path):
    """Fewer videos than ``holdout_every``: the last one is held out, not trained on."""
    import numpy as np

    from flowception.pipelines.vae_train import VaeRecipe, train_image_vae

    videos = [np.full((2, 8, 8, 1), 40 * i, np.uint8) for i in range(3)]
    recipe = VaeRecipe(steps=1, batch_size=2, block_out_channels=(4, 4))
    record = train_image_vae(videos, str(tmp_path / "vae"), recipe)
    assert (record["train_videos"], record["heldout_videos"]) == (2, 1)
    assert (record["train_frames"], record["heldout_frames"]) == (4, 2)
