"""One storage retry policy (``pipelines.shards.retry_policy``), tested with real faults:
connections to the moto S3 server reset (TCP RST) or refused by a forwarder in front of it."""

from __future__ import annotations

import json

import pytest

from flowception.cluster import checkpoint, storage
from flowception.pipelines import shards
from flowception.pipelines.shards import Storage, read_bytes, write_bytes
from tests.fixtures.switch import Switch


@pytest.fixture
def switch(s3_endpoint):
    sw = Switch(s3_endpoint)
    sw.on()
    yield sw
    sw.off()


def test_policy_is_botocore_standard_with_total_attempts():
    fs = shards.s3_filesystem(Storage(endpoint_url="http://127.0.0.1:1", retries=4))
    assert fs.config_kwargs["retries"] == {"mode": "standard", "total_max_attempts": 4}
    assert fs.retries == 4


def test_shard_reads_and_writes_retry_connection_resets(s3_bucket, switch):
    url = f"{s3_bucket}/shard-000000.tar"
    write_bytes(url, b"first", Storage(endpoint_url=switch.uri))
    patient = Storage(endpoint_url=switch.uri, retries=5)
    read_bytes(url, patient)  # warm: the bucket's region is cached
    switch.reset_next(3)  # three connections in a row reset by the peer
    assert read_bytes(url, patient) == b"first"
    assert switch.reset_count == 3
    switch.reset_next(3)
    write_bytes(url, b"second", patient)
    assert read_bytes(url, Storage(endpoint_url=switch.uri)) == b"second"

    hasty = Storage(endpoint_url=switch.uri, retries=1)  # the retry is what saved the above
    read_bytes(url, hasty)
    switch.reset_next(5)  # more than one request's worth (s3fs may fall back HEAD -> LIST)
    with pytest.raises(Exception, match="Could not connect"):
        read_bytes(url, hasty)


def _checkpoint(tmp_path):
    from tests.cluster.test_checkpoint import _write_checkpoint

    return _write_checkpoint(tmp_path / "run", 3)


def test_checkpoint_upload_retries_connection_resets(s3_bucket, switch, tmp_path):
    local = _checkpoint(tmp_path)
    run_uri = f"{s3_bucket}/runs/retry"
    checkpoint.upload(local, f"{s3_bucket}/warm", endpoint_url=switch.uri)  # region cached
    switch.reset_next(3)
    checkpoint.upload(local, f"{run_uri}/{local.name}", endpoint_url=switch.uri)
    assert switch.reset_count == 3
    assert [s for s, _ in checkpoint.list_checkpoints(run_uri, switch.uri)] == [3]


def test_checkpoint_upload_to_a_dead_endpoint_raises(s3_bucket, switch, tmp_path):
    """After the retries the error reaches the caller (the worker: Ray Train's
    ``max_failures`` then applies); nothing is listed as a checkpoint."""
    local = _checkpoint(tmp_path)
    run_uri = f"{s3_bucket}/runs/dead"
    switch.off()
    with pytest.raises(Exception, match="Could not connect"):
        checkpoint.upload(local, f"{run_uri}/{local.name}", endpoint_url=switch.uri)
    fs, path = storage.resolve(f"{run_uri}/{local.name}")  # the real endpoint
    assert not storage.is_file(fs, f"{path}/{checkpoint.MANIFEST}")
    assert json.loads((local / checkpoint.MANIFEST).read_text())["step"] == 3
