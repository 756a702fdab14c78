"""Batches for the trainer: frame-budget batching, ``VideoBatch``, and the worker's stream.

The worker side of the data path. In a Ray Train worker::

    from flowception.pipelines.ingest import worker_stream

    stream = worker_stream(cfg.data, cursor, rank=rank, world=world)  # VideoBatchStream
    for batch in stream:                 # VideoBatch, a pure function of (seed, epoch,
        ...                              # world, cursor); batch.videos (B, F, C, H, W)
        stream.cursor                    # DataCursor: this rank's position + counts
    stream.skipped                       # Counter of bad samples by reason (this stream)

``stream.cursor.to_dict()`` goes into the checkpoint of every rank; on resume the
ranks' cursors are merged (``DataCursor.merge``) and every rank restarts from the
merged cursor (``pipelines.ingest``), re-split when the world size changed. Ranks
may get different numbers of batches per epoch: the training loop must not assume
equal counts. Nothing here imports Ray: the stream takes anything with
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
from flowception.pipelines.ingest import DataCursor, Position
from flowception.pipelines.samples import SHARD_ISSUES

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
    """Pad, stack and normalise decoded clips (latent clips are float and already
    normalised: they are only padded and stacked).

    Args:
        clips: ``uint8 [T_b, H, W, C]`` per video, or float latents ``[T_b, h, w, c]``.
        labels: class per video (``-1`` = none).
        keys: sample keys.
        epoch: epoch of the samples.
    """
    lengths = [c.shape[0] for c in clips]
    _, h, w, c = clips[0].shape
    pixels = clips[0].dtype == np.uint8
    out = np.zeros((len(clips), max(lengths), h, w, c), dtype=clips[0].dtype)  # (B, F, H, W, C)
    for b, clip in enumerate(clips):
        out[b, : clip.shape[0]] = clip
    videos = torch.from_numpy(out).permute(0, 1, 4, 2, 3).float()  # (B, F, C, H, W)
    if pixels:
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
    """``VideoBatch``es of one rank from its Ray Data reader (``dataset.build_dataset``).

    The cursor moves when a batch is yielded, to the row that did not fit into it (the
    first of the next batch), so a stream restarted there yields the same batches;
    bad rows met before that row are counted in the cursor by (epoch, reason).

    Args:
        source: the rank's ``Dataset`` (or anything with
            ``iter_batches(batch_size=, batch_format="numpy")``).
        cfg: the data config (``frame_budget``, ``max_batch_size``, ``epochs``).
        cursor: where the source starts (this rank's cursor, ``DataCursor.for_rank``).
        rank: this rank (its place in ``cursor.positions``).
        prefetch_batches: Ray Data blocks fetched ahead.
    """

    source: Any
    cfg: DataConfig
    cursor: DataCursor = field(default_factory=DataCursor)
    rank: int = 0
    prefetch_batches: int = 2
    skipped: Counter = field(default_factory=Counter)
    samples: int = 0

    def __post_init__(self) -> None:
        if not self.cursor.world:
            self.cursor = DataCursor(world=1, positions=(Position(),))

    def __iter__(self) -> Iterator[VideoBatch]:
        batcher = FrameBudgetBatcher(self.cfg.frame_budget, self.cfg.max_batch_size)
        batches = self.source.iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=self.prefetch_batches
        )
        seen: Counter = Counter()  # (epoch, reason) met since the last batch
        for row in iter_rows(batches):
            epoch = int(row["epoch"])
            for issue in str(row.get("shard_issue", "") or "").split(","):
                if issue in SHARD_ISSUES:
                    seen[(epoch, issue)] += 1
            if row["status"] != "ok":
                self.skipped[str(row["status"])] += 1
                seen[(epoch, str(row["status"]))] += 1
                continue
            done = batcher.push(row)
            if done:
                at = Position(epoch, int(row.get("unit", 0)), int(row["pos"]))
                yield self._emit(done, at, seen)
                seen = Counter()
        done = batcher.flush()
        end = Position(self.cfg.epochs)
        if done:
            yield self._emit(done, end, seen)
        else:
            self.cursor = self.cursor.moved(self.rank, end).counted(seen, Counter())

    def _emit(self, rows: list[dict[str, Any]], at: Position, seen: Counter) -> VideoBatch:
        self.samples += len(rows)
        good = Counter({int(rows[0]["epoch"]): len(rows)})
        self.cursor = self.cursor.moved(self.rank, at).counted(seen, good)
        return collate(
            [r["video"] for r in rows],
            [int(r["label"]) for r in rows],
            [str(r["key"]) for r in rows],
            int(rows[0]["epoch"]),
        )
