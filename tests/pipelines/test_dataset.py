"""The Ray Data reader on real shards: disk vs S3 vs GNU tar, bad data, order, splits, resume."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest

from flowception.pipelines.dataset import (
    build_dataset,
    decode_rows,
    plan_reads,
    read_shard_rows,
    read_task,
    shard_list,
    task_size,
)
from flowception.pipelines.ingest import DataCursor, SplitSpec, worker_stream
from flowception.pipelines.samples import read_samples
from flowception.pipelines.shards import Storage, list_shards, write_bytes

from .conftest import NUM_VIDEOS, data_cfg, meta_json, tar_bytes, tiny_mp4

ALL_KEYS = {f"mnist_train_{i:07d}" for i in range(NUM_VIDEOS)}


def _samples(cfg, cursor=None, rank=0, world=1):
    """(epoch, key) -> (video bytes, label), in stream order, plus the stream."""
    stream = worker_stream(cfg, cursor, rank=rank, world=world)
    out = []
    for b in stream:
        for i, key in enumerate(b.keys):
            n = int(b.lengths[i])
            out.append(((b.epoch, key), b.videos[i, :n].numpy().tobytes(), int(b.labels[i])))
    return out, stream


def test_disk_s3_and_gnu_tar_give_identical_samples(
    ray_data, mnist_dir, s3_bucket, s3_endpoint, tmp_path
):
    # the same files on S3
    for f in sorted(mnist_dir.iterdir()):
        write_bytes(
            f"{s3_bucket}/train/{f.name}", f.read_bytes(), Storage(endpoint_url=s3_endpoint)
        )
    # the same samples re-packed by GNU tar (no index.json): extract, then tar --sort=name
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    for shard in sorted(mnist_dir.glob("*.tar")):
        files = tmp_path / shard.stem
        files.mkdir()
        subprocess.run(["tar", "-xf", str(shard), "-C", str(files)], check=True)
        subprocess.run(
            [
                "tar",
                "--sort=name",
                "--format=posix",
                "-C",
                str(files),
                "-cf",
                str(gnu / shard.name),
                ".",
            ],
            check=True,
        )
    assert list_shards(str(gnu))[0].num_samples is None  # really read by listing

    disk, _ = _samples(data_cfg(mnist_dir))
    s3, _ = _samples(data_cfg(f"{s3_bucket}/train", s3_endpoint_url=s3_endpoint))
    tarred, _ = _samples(data_cfg(gnu))
    assert {k for (_, k), _, _ in disk} == ALL_KEYS
    assert s3 == disk
    assert tarred == disk
    assert all(0 <= label <= 9 for *_, label in disk)


def test_bad_samples_are_skipped_counted_and_logged(ray_data, tmp_path, caplog):
    members = [("g0.json", meta_json(frames=4)), ("g0.mp4", tiny_mp4(4))]
    members += [("garbage.json", meta_json()), ("garbage.mp4", b"\x00junk" * 300)]
    members += [("nojson.mp4", tiny_mp4())]
    members += [("wrongjson.json", b'{"fps": "fast"}'), ("wrongjson.mp4", tiny_mp4())]
    members += [("short.json", meta_json(frames=1)), ("short.mp4", tiny_mp4(1))]
    members += [("liar.json", meta_json(frames=9)), ("liar.mp4", tiny_mp4(1))]  # json says 9
    members += [("g1.json", meta_json(frames=3)), ("g1.mp4", tiny_mp4(3))]
    (tmp_path / "shard-a.tar").write_bytes(tar_bytes(members))
    cut = tar_bytes([("g2.json", meta_json()), ("g2.mp4", tiny_mp4()), ("cut.json", meta_json())])
    cut += tar_bytes([("cut.mp4", tiny_mp4(8))])[:700]  # header + part of the data
    (tmp_path / "shard-b.tar").write_bytes(cut)

    cfg = data_cfg(tmp_path, shuffle=False)
    batches, stream = _samples(cfg)
    assert sorted(k for (_, k), _, _ in batches) == ["g0", "g1", "g2"]
    assert stream.skipped == {
        "bad_video": 1,
        "missing_json": 1,
        "bad_json": 1,
        "too_short": 2,
        "truncated": 1,
    }
    # the same rows in-process, to see the log lines name shard and key
    with caplog.at_level(logging.WARNING, logger="flowception.pipelines.dataset"):
        decode_rows(read_shard_rows(cfg, str(tmp_path / "shard-a.tar"), 0, 0), cfg)
    assert "shard-a.tar key=garbage" in caplog.text and "bad_video" in caplog.text
    assert "shard-a.tar key=wrongjson" in caplog.text


def test_missing_location_is_a_clear_error(ray_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        build_dataset(data_cfg(tmp_path / "nothing-here"))


def test_epochs_orders_and_determinism(ray_data, mnist_dir):
    cfg = data_cfg(mnist_dir, epochs=2, seed=3)
    first, _ = _samples(cfg)
    again, _ = _samples(cfg)
    assert first == again  # same seed: same order, same clips
    by_epoch = [[k for (e, k), *_ in first if e == epoch] for epoch in (0, 1)]
    assert all(sorted(keys) == sorted(ALL_KEYS) for keys in by_epoch)  # once per epoch
    assert by_epoch[0] != by_epoch[1]  # a new order each epoch
    other, _ = _samples(cfg.replace(seed=4, epochs=1))
    assert [k for (_, k), *_ in other] != by_epoch[0]


@pytest.mark.parametrize("per_task", [1, 4, 5])
def test_tasks_of_several_shards_keep_the_plan_order(ray_data, mnist_dir, per_task):
    """4 epochs x 3 shards read by concurrent tasks of ``per_task`` shards (4 and 5: tasks
    span epoch boundaries, 5: the last task is short) arrive exactly in the order of
    ``plan_reads`` read one after another without Ray."""
    cfg = data_cfg(mnist_dir, epochs=4, seed=5, units_per_task=per_task, decode_workers=2)
    assert task_size(12, per_task, 2) == per_task  # the tasks are the ones named above
    shards = shard_list(cfg)
    expected = []
    for read in plan_reads(SplitSpec.from_config(cfg, len(shards)), DataCursor()):
        rows = read_task(cfg, shards, read)
        expected += [(read[0], k) for k, s in zip(rows["key"], rows["status"]) if s == "ok"]
    got, _ = _samples(cfg)
    assert len(expected) == 4 * NUM_VIDEOS
    assert [k for k, *_ in got] == expected


def test_a_rank_with_few_reads_still_decodes_in_parallel():
    """Tasks of ``units_per_task`` units, but never fewer tasks than decode workers while
    there are enough reads: 4 shards in tasks of 12 would leave a second worker idle."""
    assert task_size(4, 12, 2) == 2 and task_size(3, 12, 2) == 2  # 2 tasks each
    assert task_size(1000, 12, 2) == 12 and task_size(24, 12, 2) == 12
    assert task_size(1, 12, 2) == 1 and task_size(0, 12, 2) == 1
    assert task_size(10, 4, 1) == 4


def _keys(batches):
    return [k for k, *_ in batches]


def test_two_workers_get_disjoint_shares_covering_the_data(ray_data, mnist_dir):
    cfg = data_cfg(mnist_dir, epochs=2)
    results: list[list] = [[], []]
    errors: list[BaseException] = []

    def worker(rank):
        try:
            results[rank] = _keys(_samples(cfg, rank=rank, world=2)[0])
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    a, b = results
    assert a and b and not set(a) & set(b)
    assert sorted(a + b) == sorted((e, k) for e in (0, 1) for k in ALL_KEYS)
    assert _keys(_samples(cfg, rank=1, world=2)[0]) == b  # the same share, whatever the timing


def _stop_after(cfg, cursor, rank, world, n):
    """Rank ``rank``'s keys of its first ``n`` batches and its cursor then."""
    stream = worker_stream(cfg, cursor, rank=rank, world=world)
    seen = []
    for i, b in enumerate(stream):
        seen += [(b.epoch, k) for k in b.keys]
        if i + 1 == n:
            break
    return seen, DataCursor.from_dict(stream.cursor.to_dict())  # as a checkpoint stores it


def test_resume_from_cursor_sees_the_rest_exactly_once(ray_data, mnist_dir):
    cfg = data_cfg(mnist_dir, epochs=2)
    full, _ = _samples(cfg)
    seen, saved = _stop_after(cfg, None, 0, 1, 4)
    rest, _ = _samples(cfg, DataCursor.merge([saved]))
    assert seen == _keys(full)[: len(seen)]
    assert rest == full[len(seen) :]  # same order, same clips


def test_resume_with_another_world_size_sees_every_sample_once(ray_data, mnist_dir):
    """Two workers stop mid-epoch; three workers finish both epochs (issue 15 item 4)."""
    cfg = data_cfg(mnist_dir, epochs=2, max_batch_size=2)
    seen, cursors = [], []
    for rank, n in ((0, 1), (1, 3)):
        keys, cursor = _stop_after(cfg, None, rank, 2, n)
        seen += keys
        cursors.append(cursor)
    job = DataCursor.merge(cursors)
    for rank in range(3):
        seen += _keys(_samples(cfg, job, rank=rank, world=3)[0])
    assert sorted(seen) == sorted((e, k) for e in (0, 1) for k in ALL_KEYS)


def test_shards_are_checked_against_the_index_at_read_time(ray_data, mnist_dir, tmp_path):
    for f in mnist_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "shard-000001.tar").write_bytes(b"")  # its 4 indexed samples are gone
    batches, stream = _samples(data_cfg(tmp_path))
    assert len(batches) == NUM_VIDEOS - 4
    assert stream.skipped == {"empty_shard": 4}
    assert dict(((r, n) for _, r, n in stream.cursor.skipped)) == {
        "empty_shard": 4, "size_mismatch": 1, "sha256_mismatch": 1, "count_mismatch": 1,
    }  # fmt: skip


def test_a_rank_without_shards_yields_nothing(ray_data, mnist_dir):
    cfg = data_cfg(mnist_dir)  # 3 shards for 4 ranks
    shares = [_keys(_samples(cfg, rank=r, world=4)[0]) for r in range(4)]
    assert shares[3] == [] and sorted(k for s in shares for _, k in s) == sorted(ALL_KEYS)


def test_shard_bytes_equal_their_index_checksums(mnist_dir):
    for shard in list_shards(str(mnist_dir)):
        data = Path(shard.url).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert len(read_samples(data)) == shard.num_samples


def test_reader_draws_no_progress_bars(ray_data, mnist_dir):
    """A training worker's reader redrew Ray Data's progress bars into the worker's log
    all through every epoch (most of a make demo log); read in a Ray worker, as a Ray Train
    worker reads, it leaves none in that worker's log."""
    import os

    import ray

    cfg = data_cfg(mnist_dir, epochs=2, decode_workers=1)

    @ray.remote(num_cpus=0)
    def read_in_a_worker() -> tuple[int, int]:
        ds = build_dataset(cfg)
        batches = ds.iter_batches(batch_size=4, batch_format="numpy")
        return sum(len(b["key"]) for b in batches), os.getpid()

    rows, pid = ray.get(read_in_a_worker.remote())
    assert rows == 2 * NUM_VIDEOS
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    time.sleep(1.0)  # the worker's last lines reach its log files
    text = "".join(f.read_text(errors="replace") for f in logs.glob(f"worker-*-{pid}.*"))
    assert ":job_id:" in text  # the worker's own log files were read
    assert "ray_tqdm" not in text and "Queued blocks" not in text, text[-2000:]


def test_reader_loop_does_not_spin_while_the_consumer_is_busy(ray_data, mnist_dir):
    """With batches queued and the consumer busy (a training step), Ray Data's executor
    thread spins (95% of a core, ``benchmarks/loop_pace.py``); ``LoopPace`` paces it."""
    from flowception.pipelines.loop_pace import LoopPace, thread_cpu_seconds

    ds = build_dataset(data_cfg(mnist_dir, epochs=200, decode_workers=1))
    assert LoopPace in ds.context.custom_execution_callback_classes
    it = iter(ds.iter_batches(batch_size=2, batch_format="numpy"))
    next(it)
    time.sleep(2.0)  # the reads fill the queue; the loop then only waits for the consumer
    cpu0, t0 = thread_cpu_seconds(), time.perf_counter()
    for _ in range(10):
        time.sleep(0.2)
        next(it)
    share = (thread_cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    assert share < 0.4, f"the executor thread used {share:.0%} of a core"
