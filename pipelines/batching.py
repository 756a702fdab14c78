"""Batches for the trainer: frame-budget batching, ``VideoBatch``, and the resumable cursor.

The worker side of the data path. In a Ray Train worker::

    from flowception.pipelines.batching import DataCursor, VideoBatchStream

    stream = VideoBatchStream(ray.train.get_dataset_shard("train"), cfg.data)
    for batch in stream:                 # VideoBatch, deterministic given seed + world size
        ...                              # batch.videos (B, F, C, H, W) in [-1, 1]
        cursor = stream.cursor           # DataCursor of every sample yielded so far
    stream.skipped                       # Counter of bad samples by reason (this worker)

``cursor.to_dict()`` goes into the checkpoint of every rank; on resume the ranks'
cursors are merged (``DataCursor.merge``) and the result goes both to
``flowception.pipelines.dataset.build_dataset(cfg, cursor=merged)``, which leaves out what was
consumed, and to ``VideoBatchStream(..., cursor=merged)``, so later checkpoints
include the earlier progress. With the exactly-once split (``pipelines.ingest``)
ranks may get different numbers of batches per epoch: the training loop must not
assume equal counts (e.g. agree on a step count, or stop all ranks when one runs dry). Nothing here imports Ray: the stream takes anything with
``iter_batches(batch_size=..., batch_format="numpy")``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowception.pipelines.config import DataConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
#                                 VideoBatch                                  #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class VideoBatch:
    """A padded batch of variable-length clips.

    Attributes:
        videos: ``float32 [B, F, C, H, W]`` in ``[-1, 1]``, ``F = max(lengths)``; slots
            ``>= lengths[b]`` are zero.
        lengths: ``int64 [B]`` valid frames per video.
        labels: ``int64 [B]``, ``-1`` = no label.
        keys: sample keys, ``len(keys) == B``.
        epoch: the epoch every sample of the batch belongs to.
    """

    videos: Tensor
    lengths: Tensor
    labels: Tensor
    keys: list[str]
    epoch: int = 0

    @property
    def num_frames(self) -> int:
        """Valid frames in the batch (``sum(lengths)``; at most the frame budget)."""
        return int(self.lengths.sum())


def collate(clips: list[np.ndarray], labels: list[int], keys: list[str], epoch: int) -> VideoBatch:
    """Pad, stack and normalise decoded clips.

    Args:
        clips: ``uint8 [T_b, H, W, C]`` per video.
        labels: class per video (``-1`` = none).
        keys: sample keys.
        epoch: epoch of the samples.
    """
    lengths = [c.shape[0] for c in clips]
    _, h, w, c = clips[0].shape
    out = np.zeros((len(clips), max(lengths), h, w, c), dtype=np.uint8)  # (B, F, H, W, C)
    for b, clip in enumerate(clips):
        out[b, : clip.shape[0]] = clip
    videos = torch.from_numpy(out).permute(0, 1, 4, 2, 3).float()  # (B, F, C, H, W)
    videos = videos / 127.5 - 1.0
    mask = torch.arange(videos.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # (B, F)
    videos = videos * mask[:, :, None, None, None]  # padding back to exactly 0
    return VideoBatch(
        videos=videos.contiguous(),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        keys=list(keys),
        epoch=epoch,
    )


class FrameBudgetBatcher:
    """Greedy batching in stream order: a batch closes before the clip that would take
    its frame sum past ``frame_budget`` or its size past ``max_batch_size``, and at
    an epoch boundary. Deterministic given the order of the input.
    """

    def __init__(self, frame_budget: int, max_batch_size: int) -> None:
        self.frame_budget, self.max_batch_size = frame_budget, max_batch_size
        self._rows: list[dict[str, Any]] = []
        self._frames = 0

    def push(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add one good row; returns the rows of a finished batch, if one closed."""
        n = int(row["video"].shape[0])
        if n > self.frame_budget:
            raise ValueError(
                f"clip {row['key']!r} has {n} frames > frame_budget={self.frame_budget}"
            )
        done = None
        if self._rows and (
            self._frames + n > self.frame_budget
            or len(self._rows) >= self.max_batch_size
            or row["epoch"] != self._rows[0]["epoch"]
        ):
            done = self.flush()
        self._rows.append(row)
        self._frames += n
        return done

    def flush(self) -> list[dict[str, Any]] | None:
        """The pending rows as a last (partial) batch, or ``None``."""
        rows, self._rows, self._frames = self._rows, [], 0
        return rows or None


# --------------------------------------------------------------------------- #
#                                   Cursor                                    #
# --------------------------------------------------------------------------- #

Ranges = tuple[tuple[int, int], ...]


def _add_range(ranges: Ranges, a: int, b: int) -> Ranges:
    out: list[list[int]] = []
    for lo, hi in sorted([*ranges, (a, b)]):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


@dataclass(frozen=True, kw_only=True)
class DataCursor:
    """How far a data stream got: whole epochs, whole shards, and samples of started shards.

    Positions are a shard's samples in its seeded order for that epoch (good and
    bad alike), so skipping them on resume leaves each remaining sample to be seen
    exactly once. A checkpoint stores ``to_dict()``.
    """

    epoch: int = 0
    """Every epoch before this one is finished."""
    shards_done: tuple[tuple[int, int], ...] = ()
    """``(epoch, shard)``: shards (indices into the shard list) fully consumed."""
    samples_done: tuple[tuple[int, int, Ranges], ...] = ()
    """``(epoch, shard, ((lo, hi), ...))``: half-open position ranges consumed in a started shard."""

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ValueError(f"DataCursor.epoch={self.epoch!r}: must be >= 0")

    def skip(self, epoch: int, shard: int) -> Ranges | None:
        """Positions to leave out of ``(epoch, shard)``; ``None`` if the whole shard is done."""
        if epoch < self.epoch or (epoch, shard) in self.shards_done:
            return None
        for e, s, ranges in self.samples_done:
            if (e, s) == (epoch, shard):
                return ranges
        return ()

    def advance(self, epoch: int, shard: int, pos: int, count: int) -> DataCursor:
        """The cursor after consuming position ``pos`` of a shard with ``count`` positions."""
        if self.skip(epoch, shard) is None:
            return self
        ranges = _add_range(self.skip(epoch, shard) or (), pos, pos + 1)
        rest = tuple(x for x in self.samples_done if (x[0], x[1]) != (epoch, shard))
        if ranges == ((0, count),):
            return DataCursor(
                epoch=self.epoch,
                shards_done=tuple(sorted({*self.shards_done, (epoch, shard)})),
                samples_done=rest,
            )
        return DataCursor(
            epoch=self.epoch,
            shards_done=self.shards_done,
            samples_done=tuple(sorted([*rest, (epoch, shard, ranges)])),
        )

    @staticmethod
    def merge(cursors: Iterable[DataCursor], num_shards: int | None = None) -> DataCursor:
        """Union of the cursors of all ranks (what the whole job consumed).

        Args:
            cursors: one per rank.
            num_shards: when given, epochs whose shards are all done are folded into
                ``epoch`` and their entries dropped.
        """
        cursors = list(cursors)
        epoch = min((c.epoch for c in cursors), default=0)
        done = {x for c in cursors for x in c.shards_done}
        ranges: dict[tuple[int, int], Ranges] = {}
        for c in cursors:
            for e, s, rs in c.samples_done:
                for a, b in rs:
                    ranges[(e, s)] = _add_range(ranges.get((e, s), ()), a, b)
        if num_shards:
            while all((epoch, s) in done for s in range(num_shards)):
                epoch += 1
        return DataCursor(
            epoch=epoch,
            shards_done=tuple(sorted(x for x in done if x[0] >= epoch)),
            samples_done=tuple(
                sorted(
                    (e, s, r) for (e, s), r in ranges.items() if e >= epoch and (e, s) not in done
                )
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "epoch": self.epoch,
            "shards_done": [list(x) for x in self.shards_done],
            "samples_done": [[e, s, [list(r) for r in rs]] for e, s, rs in self.samples_done],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataCursor:
        """Inverse of ``to_dict``; unknown keys are a ``ValueError``."""
        unknown = sorted(set(data) - {"epoch", "shards_done", "samples_done"})
        if unknown:
            raise ValueError(f"DataCursor: unknown key(s) {unknown}")
        return cls(
            epoch=int(data.get("epoch", 0)),
            shards_done=tuple((int(e), int(s)) for e, s in data.get("shards_done", [])),
            samples_done=tuple(
                (int(e), int(s), tuple((int(a), int(b)) for a, b in rs))
                for e, s, rs in data.get("samples_done", [])
            ),
        )


# --------------------------------------------------------------------------- #
#                               Worker stream                                 #
# --------------------------------------------------------------------------- #


def iter_rows(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, Any]]:
    """Rows of column batches (numpy format) as dicts."""
    for batch in batches:
        cols = list(batch)
        for i in range(len(batch[cols[0]])):
            yield {c: batch[c][i] for c in cols}


@dataclass
class VideoBatchStream:
    """``VideoBatch``es from a Ray Data iterator (a Ray Train dataset shard).

    Args:
        source: ``ray.train.get_dataset_shard(name)``, a ``streaming_split`` part, or a
            ``Dataset``; anything with ``iter_batches(batch_size=, batch_format="numpy")``.
        cfg: the data config (``frame_budget``, ``max_batch_size``).
        cursor: where the dataset started (``build_dataset``'s cursor); progress is
            added to it.
        prefetch_batches: Ray Data batches fetched ahead.
    """

    source: Any
    cfg: DataConfig
    cursor: DataCursor = field(default_factory=DataCursor)
    prefetch_batches: int = 2
    skipped: Counter = field(default_factory=Counter)
    samples: int = 0

    def __iter__(self) -> Iterator[VideoBatch]:
        batcher = FrameBudgetBatcher(self.cfg.frame_budget, self.cfg.max_batch_size)
        batches = self.source.iter_batches(
            batch_size=16, batch_format="numpy", prefetch_batches=self.prefetch_batches
        )
        for row in iter_rows(batches):
            if row["status"] != "ok":
                self.skipped[str(row["status"])] += 1
                self._consume([row])
                continue
            done = batcher.push(row)
            if done:
                yield self._emit(done)
        done = batcher.flush()
        if done:
            yield self._emit(done)

    def _consume(self, rows: list[dict[str, Any]]) -> None:
        cursor = self.cursor
        for r in rows:
            cursor = cursor.advance(
                int(r["epoch"]), int(r["shard"]), int(r["pos"]), int(r["count"])
            )
        self.cursor = cursor

    def _emit(self, rows: list[dict[str, Any]]) -> VideoBatch:
        self._consume(rows)
        self.samples += len(rows)
        return collate(
            [r["video"] for r in rows],
            [int(r["label"]) for r in rows],
            [str(r["key"]) for r in rows],
            int(rows[0]["epoch"]),
        )
