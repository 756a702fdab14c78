"""Shard writer, index, listing, the storage retry helper, local and on moto S3."""

from __future__ import annotations

import hashlib
import json

import pytest

from flowception.pipelines import schema
from flowception.pipelines.samples import read_samples
from flowception.pipelines.shards import (
    ShardWriter,
    Storage,
    list_shards,
    read_bytes,
    write_bytes,
)

from .conftest import meta_json, tiny_mp4


def _write(out: str, n: int, storage: Storage | None = None, **kw) -> dict:
    with ShardWriter(out, storage=storage or Storage(), **kw) as w:
        for i in range(n):
            w.add(f"s{i:03d}", tiny_mp4(frames=2), schema.parse_meta(meta_json(frames=2)))
    return w.index


def test_sample_limit_splits_shards_and_index_matches_files(tmp_path):
    index = _write(str(tmp_path), 10, max_samples=4)
    assert [s["num_samples"] for s in index["shards"]] == [4, 4, 2]
    assert index["num_samples"] == 10
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk == index
    for s in index["shards"]:
        data = (tmp_path / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    keys = [
        x.key for s in index["shards"] for x in read_samples((tmp_path / s["name"]).read_bytes())
    ]
    assert keys == [f"s{i:03d}" for i in range(10)]


def test_byte_limit_splits_shards(tmp_path):
    one = len(tiny_mp4(frames=2)) + len(meta_json(frames=2)) + 1024
    index = _write(str(tmp_path), 6, max_bytes=3 * one)
    assert len(index["shards"]) >= 2
    assert all(s["bytes"] <= 3 * one + 10240 for s in index["shards"])  # + tar end padding
    assert sum(s["num_samples"] for s in index["shards"]) == 6


def test_duplicate_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate sample key 'a'"):
        with ShardWriter(str(tmp_path)) as w:
            meta = schema.parse_meta(meta_json())
            w.add("a", b"x", meta)
            w.add("a", b"y", meta)
    assert not (tmp_path / "index.json").exists()  # unfinished: no index


def test_listing_with_and_without_index(tmp_path):
    _write(str(tmp_path / "a"), 5, max_samples=2)
    shards = list_shards(str(tmp_path / "a"))
    assert [s.url.rsplit("/", 1)[1] for s in shards] == [schema.shard_name(i) for i in range(3)]
    assert [s.num_samples for s in shards] == [2, 2, 1]
    (tmp_path / "a" / "index.json").unlink()
    bare = list_shards(str(tmp_path / "a"))
    assert [s.url for s in bare] == [s.url for s in shards] and bare[0].num_samples is None


def test_missing_things_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_shards(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path / "empty"))
    _write(str(tmp_path / "b"), 3, max_samples=1)
    (tmp_path / "b" / schema.shard_name(1)).unlink()
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        list_shards(str(tmp_path / "b"))


def test_local_write_is_whole_file_replace(tmp_path):
    """Local writes go through a temporary file and a rename: an overwrite leaves the
    new bytes only, parents are created, and no temporary file is left behind."""
    url = str(tmp_path / "a" / "b" / "x.npz")
    write_bytes(url, b"first version, longer")
    write_bytes(url, b"second")
    assert read_bytes(url) == b"second"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["x.npz"]


def test_s3_write_list_read(s3_bucket, s3_endpoint, tmp_path):
    storage = Storage(endpoint_url=s3_endpoint)
    base = f"{s3_bucket}/mnist/train"
    index = _write(base, 5, storage, max_samples=2)
    local = _write(str(tmp_path), 5, max_samples=2)
    assert [s["sha256"] for s in index["shards"]] == [s["sha256"] for s in local["shards"]]
    shards = list_shards(base, storage)
    assert [s.url for s in shards] == [f"{base}/{schema.shard_name(i)}" for i in range(3)]
    assert read_bytes(shards[0].url, storage) == (tmp_path / schema.shard_name(0)).read_bytes()


def test_s3_missing_bucket_and_key_are_named(s3_endpoint):
    storage = Storage(endpoint_url=s3_endpoint, retries=1)
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        list_shards("s3://no-such-bucket/train", storage)
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        write_bytes("s3://no-such-bucket/x", b"1", storage)


def test_s3_missing_object_is_named(s3_bucket, s3_endpoint):
    storage = Storage(endpoint_url=s3_endpoint)
    with pytest.raises(FileNotFoundError, match="absent.tar"):
        read_bytes(f"{s3_bucket}/absent.tar", storage)
    with pytest.raises(FileNotFoundError, match="prefix"):
        list_shards(f"{s3_bucket}/prefix", storage)
