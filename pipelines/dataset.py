"""The Ray Data reader: shards (local or ``s3://``) -> decoded, clipped, resized rows.

One read task per *unit* (a shard of one epoch, minus positions already consumed;
see ``pipelines.ingest``), which reads the tar (one GET, retried), checks it against
``index.json`` (size, sha256, sample count), groups members by key, checks the json,
plans the clip (start, length), orders the samples by (seed, epoch, shard) and
decodes the planned frames (PyAV, centre crop + resize) -> video uint8 [T, H, W, C].
Read and decode are one task, so a shard's MP4 bytes never enter the object store
and Ray Data runs one operator (two operators on a 2-CPU node share its CPUs).

Latent shards (``index.json`` meta ``kind: latents``, ``flowception data encode``) are
read the same way, with ``decode_latent_rows`` in place of the MP4 decode: the ``video``
column then holds the planned clip of normalised latents, ``float16 [T', h, w, c]``
(channels last like pixels; ``batching.collate`` leaves float rows unscaled), and clip
lengths, strides and the frame budget count latent frames.

Every sample position becomes one row, bad ones too: ``status`` is ``"ok"`` or a skip
reason (``pipelines.samples.SKIP_REASONS``), logged with the shard URL and the key,
so the consumer counts them and the cursor stays exact. Samples that ``index.json``
lists but the shard does not hold (0-byte, all-zero or truncated tars) are rows with
status ``empty_shard`` / ``missing_from_shard``; a shard that differs from the index
carries ``shard_issue`` (``pipelines.samples.SHARD_ISSUES``) on its position-0 row.
Rows come in a deterministic order (``preserve_order``): the rank's units in plan
order, samples in their seeded order per shard. Normalisation to ``[-1, 1]`` happens
in ``pipelines.batching.collate`` (uint8 rows are 4x lighter in the object store).

Driver or worker::

    ds = build_dataset(cfg)                                   # the whole data, world 1
    ds = build_dataset(cfg, cursor=c, rank=r, world=w)        # rank r's share after c
    stream = pipelines.ingest.worker_stream(cfg, c, rank=r, world=w)   # both + batching
"""

from __future__ import annotations

import hashlib
import io
import logging
from functools import partial
from typing import Any

import numpy as np

from flowception.pipelines import schema
from flowception.pipelines.config import DataConfig
from flowception.pipelines.decode import DecodeError, centre_crop_resize, decode_mp4
from flowception.pipelines.ingest import DataCursor, SplitSpec, add_range, rank_units
from flowception.pipelines.samples import plan_clip, read_samples, sample_rng, shard_order
from flowception.pipelines.shards import (
    ShardInfo,
    Storage,
    exists,
    join,
    list_shards,
    parse_index,
    read_bytes,
)

log = logging.getLogger(__name__)

COLUMNS = (
    "key", "url", "epoch", "unit", "shard", "pos", "count", "status", "detail", "label",
    "shard_issue", "video",
)  # fmt: skip


# --------------------------------------------------------------------------- #
#                             Read (one shard)                                #
# --------------------------------------------------------------------------- #


def shard_issues(data: bytes, info: ShardInfo | None, found: int) -> list[str]:
    """How a shard's bytes and sample count differ from its ``index.json`` entry."""
    if info is None:
        return []
    issues = []
    if info.bytes is not None and len(data) != info.bytes:
        issues.append("size_mismatch")
    if info.sha256 is not None and hashlib.sha256(data).hexdigest() != info.sha256:
        issues.append("sha256_mismatch")
    if info.num_samples is not None and found != info.num_samples:
        issues.append("count_mismatch")
    return issues


def read_shard_rows(
    cfg: DataConfig,
    url: str,
    epoch: int,
    shard: int,
    skip: tuple[tuple[int, int], ...] = (),
    *,
    info: ShardInfo | None = None,
    unit: int = 0,
    media: str = schema.VIDEO_EXT,
) -> dict[str, np.ndarray]:
    """The rows of one shard for one epoch, before decoding (column batch).

    Args:
        cfg: data config (clip plan, seed, storage).
        url: the shard.
        epoch: epoch (seeds the sample order and clip starts).
        shard: index of the shard in the shard list.
        skip: half-open position ranges already consumed (from a cursor).
        info: the shard's ``index.json`` entry, to check size, sha256 and sample count
            and to count the samples a damaged shard lost.
        unit: index of this read in the rank's plan for ``epoch`` (for the cursor).
        media: the payload member's extension (``npy`` in latent shards).

    Returns:
        Columns ``COLUMNS`` minus ``video``, plus ``start, length, mp4`` (the payload
        bytes, MP4 or ``.npy``); one row per sample position not in ``skip``.
    """
    data = read_bytes(url, Storage.from_config(cfg))
    samples = read_samples(data, media)
    issues = shard_issues(data, info, len(samples))
    if issues and not any(a == 0 for a, _ in skip):
        log.warning(
            "shard %s differs from index.json: %s (%d bytes, %d samples; index: %s bytes, %s samples)",
            url, ", ".join(issues), len(data), len(samples),
            info.bytes if info else None, info.num_samples if info else None,
        )  # fmt: skip
    indexed = info.num_samples if info is not None and info.num_samples is not None else 0
    count = max(len(samples), indexed, 0 if samples or data.strip(b"\0") else 1)
    lost = "empty_shard" if not samples else "missing_from_shard"
    order = shard_order(
        count, seed=cfg.seed, epoch=epoch, salt=f"shard:{shard}", shuffle=cfg.shuffle
    )
    rows: dict[str, list[Any]] = {c: [] for c in (*COLUMNS[:-1], "start", "length", "mp4")}
    for pos, i in enumerate(order):
        if any(a <= pos < b for a, b in skip):
            continue
        if i >= len(samples):
            key, status, detail, meta = f"?#{i}", lost, "", None
            detail = f"index.json lists {count} samples, the shard holds {len(samples)}"
            mp4 = b""
        else:
            s = samples[i]
            key, status, detail, meta = s.key, s.skip or "ok", s.detail, s.meta
            mp4 = s.parts.get(media, b"")
        start, length = 0, 0
        if meta is not None:
            plan = plan_clip(
                meta.num_frames,
                max_frames=cfg.num_frames,
                min_frames=cfg.min_frames,
                stride=cfg.frame_stride,
                random_start=cfg.clip_start == "random",
                rng=sample_rng(cfg.seed, epoch, key),
            )
            if plan is None:
                status, detail = "too_short", f"{meta.num_frames} frames in the json"
            else:
                start, length = plan
        if status != "ok":
            log.warning("skip %s %s key=%s: %s", status, url, key, detail)
        label = meta.label if meta is not None and meta.label is not None else schema.NO_LABEL
        issue = ",".join(issues) if pos == 0 else ""
        values = (
            key, url, epoch, unit, shard, pos, count, status, detail, label, issue, start, length,
        )  # fmt: skip
        for col, value in zip(rows, values):
            rows[col].append(value)
        rows["mp4"].append(mp4 if status == "ok" else b"")
    return {c: _column(v, c) for c, v in rows.items()}


_STR_COLUMNS = {"key", "url", "status", "detail", "shard_issue"}


def _decoded(batch: dict, status: list, detail: list, videos: list) -> dict:
    """The output rows of a decode: the batch's columns, status, detail and the clips."""
    out = {c: batch[c] for c in COLUMNS[:-1]}
    out["status"], out["detail"] = np.asarray(status), np.asarray(detail)
    out["video"] = _column(videos)
    return out


def _column(values: list[Any], name: str = "") -> np.ndarray:
    if name == "mp4" or (values and isinstance(values[0], (bytes, np.ndarray))):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    if name in _STR_COLUMNS:
        return np.asarray(values, dtype=str)
    return np.asarray(values, dtype=np.int64)


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
    return _decoded(batch, status, detail, videos)


def decode_latent_rows(
    batch: dict[str, np.ndarray], cfg: DataConfig, latent: schema.LatentSet
) -> dict[str, np.ndarray]:
    """``decode_rows`` for latent shards: load each ``ok`` row's ``.npy`` (no pickle), check
    its shape against the index, cut the planned clip (in latent frames).

    Returns:
        Columns ``COLUMNS``; ``video`` is ``float16 [T', h, w, c]`` (``T' = 0`` when skipped).
    """
    n = len(batch["key"])
    status = [str(s) for s in batch["status"]]
    detail = [str(d) for d in batch["detail"]]
    (h, w), c = latent.latent_size, latent.latent_channels
    empty = np.zeros((0, h, w, c), dtype=np.float16)
    clips: list[np.ndarray] = []
    for i in range(n):
        clip = empty
        if status[i] == "ok":
            try:
                z = np.load(io.BytesIO(batch["mp4"][i]), allow_pickle=False)  # (T', c, h, w)
            except (ValueError, OSError, EOFError) as exc:
                status[i], detail[i] = "bad_video", f"latent .npy unreadable ({exc})"
            else:
                if z.ndim != 4 or tuple(z.shape[1:]) != (c, h, w) or not np.isfinite(z).all():
                    status[i] = "bad_video"
                    detail[i] = f"latent {z.dtype} {z.shape}: index.json says [T', {c}, {h}, {w}]"
                else:
                    start, length = int(batch["start"][i]), int(batch["length"][i])
                    stop = start + (length - 1) * cfg.frame_stride + 1
                    z = z[start : stop : cfg.frame_stride]  # (T', c, h, w)
                    if z.shape[0] < cfg.min_frames:
                        status[i] = "too_short"
                        detail[i] = f"{z.shape[0]} latent frames from start {start}"
                    else:
                        clip = np.ascontiguousarray(
                            z.transpose(0, 2, 3, 1).astype(np.float16)
                        )  # (T', h, w, c)
            if status[i] != "ok":
                log.warning(
                    "skip %s %s key=%s: %s", status[i], batch["url"][i], batch["key"][i], detail[i]
                )
        clips.append(clip)
    return _decoded(batch, status, detail, clips)


def latent_set(cfg: DataConfig) -> schema.LatentSet | None:
    """What ``cfg.shards``'s ``index.json`` says about latents (``None``: pixel shards or
    no index)."""
    storage = Storage.from_config(cfg)
    url = join(cfg.shards, schema.INDEX_NAME)
    if not exists(url, storage):
        return None
    index = parse_index(read_bytes(url, storage), url)
    return schema.LatentSet.from_meta(index.get("meta"), url)


# --------------------------------------------------------------------------- #
#                                Datasource                                   #
# --------------------------------------------------------------------------- #

Read = tuple[int, int, int, tuple[tuple[int, int], ...]]  # epoch, unit, shard, skip


def plan_reads(spec: SplitSpec, cursor: DataCursor, rank: int = 0, world: int = 1) -> list[Read]:
    """Rank ``rank``'s read tasks in stream order, from its position in ``cursor`` to the
    last epoch: ``(epoch, unit, shard, skip)`` (see ``pipelines.ingest``)."""
    cursor = cursor.for_rank(rank, world, spec)
    at = cursor.position(rank)
    reads = []
    for epoch in range(at.epoch, spec.epochs):
        units = rank_units(spec, epoch, rank, world, cursor.base_for(epoch))
        for u, unit in enumerate(units):
            if epoch == at.epoch and u < at.unit:
                continue
            first = (epoch, u) == (at.epoch, at.unit)
            skip = add_range(unit.skip, 0, at.pos) if first else unit.skip
            reads.append((epoch, u, unit.shard, skip))
    return reads


def read_task(
    cfg: DataConfig,
    shards: list[ShardInfo],
    read: Read,
    latent: schema.LatentSet | None = None,
) -> dict[str, np.ndarray]:
    """One unit, read and decoded (columns ``COLUMNS``); ``latent``: the shards hold latents."""
    epoch, unit, shard, skip = read
    info = shards[shard]
    media = schema.LATENT_EXT if latent is not None else schema.VIDEO_EXT
    rows = read_shard_rows(cfg, info.url, epoch, shard, skip, info=info, unit=unit, media=media)
    return decode_latent_rows(rows, cfg, latent) if latent is not None else decode_rows(rows, cfg)


def _read_blocks(
    cfg: DataConfig, shards: list[ShardInfo], reads: list[Read], latent: schema.LatentSet | None
):
    """One task's units, each read, decoded and yielded as its own block, in order."""
    from ray.data.block import BlockAccessor

    for read in reads:
        yield BlockAccessor.batch_to_block(read_task(cfg, shards, read, latent))


def task_chunks(reads: list[Read], per_task: int) -> list[list[Read]]:
    """``reads`` cut into consecutive runs of ``per_task`` (the last may be shorter):
    with ordered output, the blocks still arrive in ``reads`` order."""
    return [reads[i : i + per_task] for i in range(0, len(reads), per_task)]


def task_size(reads: int, units_per_task: int, workers: int) -> int:
    """Units per read task: ``units_per_task``, or fewer when a rank has so few reads that
    its tasks would not keep ``workers`` decoding in parallel (at least ``workers`` tasks
    while there are that many reads)."""
    return max(1, min(units_per_task, -(-reads // max(1, workers))))


def _datasource(
    cfg: DataConfig,
    shards: list[ShardInfo],
    chunks: list[list[Read]],
    latent: schema.LatentSet | None = None,
):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class VideoShardDatasource(Datasource):
        """One read+decode task per ``units_per_task`` units, in ``plan_reads`` order."""

        def estimate_inmemory_data_size(self) -> int | None:
            return _bytes([shards[r[2]].bytes for chunk in chunks for r in chunk])

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(
                    partial(_read_blocks, cfg, shards, chunk, latent),
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=_bytes([shards[r[2]].bytes for r in chunk]),
                        exec_stats=None,
                        input_files=tuple(shards[r[2]].url for r in chunk),
                    ),
                    per_task_row_limit=per_task_row_limit,
                )
                for chunk in chunks
            ]

    return VideoShardDatasource()


def _bytes(sizes: list[int | None]) -> int | None:
    return None if None in sizes else int(sum(sizes))


def shard_list(cfg: DataConfig) -> list[ShardInfo]:
    """The shards under ``cfg.shards`` (``index.json`` entries when there is an index).

    Raises:
        FileNotFoundError: the directory, prefix, bucket or a listed shard is missing.
    """
    shards = list_shards(cfg.shards, Storage.from_config(cfg))
    if not shards:
        raise FileNotFoundError(f"{cfg.shards}: no shards")
    return shards


def build_dataset(
    cfg: DataConfig,
    *,
    cursor: DataCursor | None = None,
    rank: int = 0,
    world: int = 1,
    shards: list[ShardInfo] | None = None,
    latent: schema.LatentSet | None | bool = True,
):
    """Rank ``rank`` of ``world``'s decoded rows over ``cfg.shards``, from its position in
    ``cursor`` to the last epoch (``cfg.epochs``), in a deterministic order.

    Args:
        cfg: data config.
        cursor: a job cursor (``DataCursor.merge``) or a rank's; ``None``: the start.
        rank: this worker's rank.
        world: number of workers sharing the data.
        shards: the shard list, if already listed (``shard_list``).
        latent: the shards' ``LatentSet`` if already read, ``None`` for pixel shards;
            ``True`` (default): read it from ``index.json`` (``latent_set``).

    Returns:
        ``ray.data.Dataset`` with columns ``COLUMNS`` (``None`` columns when this rank has
        nothing left to read); feed it to ``pipelines.batching.VideoBatchStream``.

    Raises:
        FileNotFoundError: the shard directory, prefix, bucket or a listed shard is missing.
    """
    import ray

    # Resolve the endpoint here so that read tasks use the caller's, whatever their env.
    cfg = cfg.replace(s3_endpoint_url=cfg.endpoint_url())
    shards = shards or shard_list(cfg)
    if latent is True:
        latent = latent_set(cfg)
    spec = SplitSpec.from_config(cfg, len(shards))
    reads = plan_reads(spec, cursor or DataCursor(), rank, world)
    if not reads:
        return ray.data.from_items([])
    chunks = task_chunks(reads, task_size(len(reads), cfg.units_per_task, cfg.decode_workers))
    ds = ray.data.read_datasource(
        _datasource(cfg, shards, chunks, latent),
        override_num_blocks=len(chunks),
        concurrency=cfg.decode_workers,
    )
    ds.context.execution_options.preserve_order = True
    # The reservation allocator keeps half the CPUs for operators a single-op read does
    # not have: with 2 CPUs the second task then waited ~1 s for a budget (ray.timeline
    # and the ray-data debug log; README "Benchmarks"). ``concurrency`` already caps it.
    ds.context.op_resource_reservation_enabled = False
    # No progress bars: in a Ray Train worker they are redrawn into its log all through
    # every epoch (22,330 bar lines and ~41,600 blank redraws of the 64,586 lines in a
    # make demo log, against 180 step lines); the step lines are the progress.
    ds.context.enable_progress_bars = False
    from flowception.pipelines.loop_pace import install

    install(ds.context)  # no busy loop while the consumer trains (pipelines.loop_pace)
    return ds


def num_shards(cfg: DataConfig) -> int:
    """Number of shards under ``cfg.shards``."""
    return len(shard_list(cfg))
