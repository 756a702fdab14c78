"""The Ray Data reader: shards (local or ``s3://``) -> decoded, clipped, resized rows.

Pipeline (one read task per shard and epoch, fused with the decode)::

    VideoShardDatasource     read the tar (one GET, retried), group members by key,
                             check the json, plan the clip (start, length), order the
                             samples by (seed, epoch, shard)
      .map_batches(decode)   PyAV decode of the planned frames, centre crop + resize
                             -> video uint8 [T, H, W, C]

Every sample becomes one row, bad ones too: ``status`` is ``"ok"`` or a skip reason
(``pipelines.samples.SKIP_REASONS``), logged with the shard URL and the key, so the
consumer counts them and the cursor stays exact. Rows are in a deterministic order
(``preserve_order``): shards in a seeded order per epoch, samples in a seeded order
per shard. Normalisation to ``[-1, 1]`` happens in ``pipelines.batching.collate``
(uint8 rows are 4x lighter in the object store).

Driver::

    ds = build_dataset(cfg, cursor=cursor)              # cfg: DataConfig
    trainer = TorchTrainer(..., datasets={"train": ds},
                           dataset_config=pipelines.ingest.exactly_once_config())
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np

from flowception.pipelines import schema
from flowception.pipelines.batching import DataCursor
from flowception.pipelines.config import DataConfig
from flowception.pipelines.decode import DecodeError, centre_crop_resize, decode_mp4
from flowception.pipelines.samples import plan_clip, read_samples, sample_rng, shard_order
from flowception.pipelines.shards import ShardInfo, Storage, list_shards, read_bytes

log = logging.getLogger(__name__)

COLUMNS = ("key", "url", "epoch", "shard", "pos", "count", "status", "detail", "label", "video")


# --------------------------------------------------------------------------- #
#                             Read (one shard)                                #
# --------------------------------------------------------------------------- #


def read_shard_rows(
    cfg: DataConfig, url: str, epoch: int, shard: int, skip: tuple[tuple[int, int], ...] = ()
) -> dict[str, np.ndarray]:
    """The rows of one shard for one epoch, before decoding (column batch).

    Args:
        cfg: data config (clip plan, seed, storage).
        url: the shard.
        epoch: epoch (seeds the sample order and clip starts).
        shard: index of the shard in the shard list.
        skip: half-open position ranges already consumed (from a cursor).

    Returns:
        Columns ``key, url, epoch, shard, pos, count, status, detail, label, start,
        length, mp4``; one row per sample position not in ``skip``.
    """
    data = read_bytes(url, Storage.from_config(cfg))
    samples = read_samples(data)
    order = shard_order(
        len(samples), seed=cfg.seed, epoch=epoch, salt=f"shard:{shard}", shuffle=cfg.shuffle
    )
    rows: dict[str, list[Any]] = {c: [] for c in (*COLUMNS[:-1], "start", "length", "mp4")}
    for pos, i in enumerate(order):
        if any(a <= pos < b for a, b in skip):
            continue
        s = samples[i]
        status, detail, start, length = s.skip or "ok", s.detail, 0, 0
        if s.meta is not None:
            plan = plan_clip(
                s.meta.num_frames,
                max_frames=cfg.num_frames,
                min_frames=cfg.min_frames,
                stride=cfg.frame_stride,
                random_start=cfg.clip_start == "random",
                rng=sample_rng(cfg.seed, epoch, s.key),
            )
            if plan is None:
                status, detail = "too_short", f"{s.meta.num_frames} frames in the json"
            else:
                start, length = plan
        if status != "ok":
            log.warning("skip %s %s key=%s: %s", status, url, s.key, detail)
        label = s.meta.label if s.meta is not None and s.meta.label is not None else schema.NO_LABEL
        values = (s.key, url, epoch, shard, pos, len(samples), status, detail, label, start, length)
        for col, value in zip(rows, values):
            rows[col].append(value)
        rows["mp4"].append(s.parts.get(schema.VIDEO_EXT, b"") if status == "ok" else b"")
    return {c: _column(v) for c, v in rows.items()}


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], (bytes, np.ndarray)):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values)


# --------------------------------------------------------------------------- #
#                                  Decode                                     #
# --------------------------------------------------------------------------- #


def decode_rows(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    """Decode the planned clip of every ``ok`` row; undecodable or short ones become skips.

    Args:
        batch: columns from ``read_shard_rows``.
        cfg: data config (size, channels, stride, min frames, threads).

    Returns:
        Columns ``COLUMNS``; ``video`` is ``uint8 [T, size, size, channels]`` (``T = 0``
        for skipped rows).
    """
    n = len(batch["key"])
    status = [str(s) for s in batch["status"]]
    detail = [str(d) for d in batch["detail"]]
    empty = np.zeros((0, cfg.size, cfg.size, cfg.channels), dtype=np.uint8)
    videos: list[np.ndarray] = []
    for i in range(n):
        video = empty
        if status[i] == "ok":
            try:
                clip = decode_mp4(
                    batch["mp4"][i],
                    channels=cfg.channels,
                    start=int(batch["start"][i]),
                    stride=cfg.frame_stride,
                    max_frames=int(batch["length"][i]),
                    threads=cfg.decode_threads,
                )  # (T, H0, W0, C)
            except DecodeError as exc:
                status[i], detail[i] = "bad_video", str(exc)
            else:
                if clip.shape[0] < cfg.min_frames:
                    status[i] = "too_short"
                    detail[i] = f"{clip.shape[0]} frames decoded from start {batch['start'][i]}"
                else:
                    video = centre_crop_resize(clip, cfg.size)  # (T, size, size, C)
            if status[i] != "ok":
                log.warning(
                    "skip %s %s key=%s: %s", status[i], batch["url"][i], batch["key"][i], detail[i]
                )
        videos.append(video)
    out = {c: batch[c] for c in COLUMNS[:-1]}
    out["status"], out["detail"] = np.asarray(status), np.asarray(detail)
    out["video"] = _column(videos)
    return out


# --------------------------------------------------------------------------- #
#                                Datasource                                   #
# --------------------------------------------------------------------------- #


def plan_reads(
    cfg: DataConfig, shards: list[ShardInfo], cursor: DataCursor | None = None
) -> list[tuple[str, int, int, tuple[tuple[int, int], ...]]]:
    """The read tasks in stream order: ``(url, epoch, shard, skip)`` for every epoch
    from ``cursor.epoch`` to ``cfg.epochs``, shards in their seeded order, done ones left out.
    """
    cursor = cursor or DataCursor()
    reads = []
    for epoch in range(cursor.epoch, cfg.epochs):
        for i in shard_order(
            len(shards), seed=cfg.seed, epoch=epoch, salt="shards", shuffle=cfg.shuffle
        ):
            skip = cursor.skip(epoch, i)
            if skip is not None:
                reads.append((shards[i].url, epoch, i, skip))
    return reads


def _read_task(cfg: DataConfig, url: str, epoch: int, shard: int, skip: Any):
    from ray.data.block import BlockAccessor

    batch = read_shard_rows(cfg, url, epoch, shard, skip)
    yield BlockAccessor.batch_to_block(batch)


def _datasource(cfg: DataConfig, shards: list[ShardInfo], cursor: DataCursor | None):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class VideoShardDatasource(Datasource):
        """One read task per (epoch, shard), in ``plan_reads`` order."""

        def __init__(self) -> None:
            self.reads = plan_reads(cfg, shards, cursor)
            self.sizes = {s.url: s.bytes for s in shards}

        def estimate_inmemory_data_size(self) -> int | None:
            sizes = [self.sizes[url] for url, *_ in self.reads]
            return None if None in sizes else int(sum(sizes))

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(
                    partial(_read_task, cfg, url, epoch, shard, skip),
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=self.sizes[url],
                        exec_stats=None,
                        input_files=(url,),
                    ),
                    per_task_row_limit=per_task_row_limit,
                )
                for url, epoch, shard, skip in self.reads
            ]

    return VideoShardDatasource()


def build_dataset(cfg: DataConfig, *, cursor: DataCursor | None = None):
    """The Ray Data dataset of decoded rows over ``cfg.shards`` for epochs
    ``cursor.epoch .. cfg.epochs - 1``, leaving out what ``cursor`` says was consumed.

    Args:
        cfg: data config.
        cursor: merged cursor of a checkpoint (``DataCursor.merge``), or ``None``.

    Returns:
        ``ray.data.Dataset`` with columns ``COLUMNS``; feed it to
        ``pipelines.batching.VideoBatchStream`` (directly or per Train worker).

    Raises:
        FileNotFoundError: the shard directory, prefix, bucket or a listed shard is missing.
    """
    import ray

    # Resolve the endpoint here so that read tasks use the driver's, whatever their env.
    cfg = cfg.replace(s3_endpoint_url=cfg.endpoint_url())
    shards = list_shards(cfg.shards, Storage.from_config(cfg))
    if not shards:
        raise FileNotFoundError(f"{cfg.shards}: no shards")
    ds = ray.data.read_datasource(
        _datasource(cfg, shards, cursor),
        compute=ray.data.TaskPoolStrategy(size=cfg.decode_workers),
        override_num_blocks=max(1, len(shards)),
    )
    ds = ds.map_batches(
        decode_rows,
        fn_kwargs={"cfg": cfg},
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=cfg.decode_workers),
        zero_copy_batch=True,
    )
    ds.context.execution_options.preserve_order = True
    return ds


def num_shards(cfg: DataConfig) -> int:
    """Number of shards under ``cfg.shards`` (for ``DataCursor.merge(..., num_shards)``)."""
    return len(list_shards(cfg.shards, Storage.from_config(cfg)))
