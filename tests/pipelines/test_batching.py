"""Frame-budget batching, VideoBatch layout and the cursor, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowception.pipelines.batching import (
    FrameBudgetBatcher,
    VideoBatchStream,
    collate,
)
from flowception.pipelines.ingest import Position

from .conftest import data_cfg


class ListSource:
    """Stands in for a Ray DataIterator: yields given rows as numpy column batches."""

    def __init__(self, rows):
        self.rows = rows

    def iter_batches(self, *, batch_size, batch_format, prefetch_batches=1):
        assert batch_format == "numpy"
        batch_size = batch_size or 3
        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i : i + batch_size]
            batch = {}
            for col in chunk[0]:
                values = [r[col] for r in chunk]
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                batch[col] = arr
            yield batch


def _rows(lengths, epoch=0, shard=0, status=None):
    rows = []
    for i, n in enumerate(lengths):
        rows.append(
            {
                "key": f"e{epoch}s{shard}k{i}",
                "epoch": epoch,
                "unit": shard,
                "shard": shard,
                "pos": i,
                "count": len(lengths),
                "status": (status or {}).get(i, "ok"),
                "label": i % 3 - 1,
                "shard_issue": "",
                "video": np.full((n, 4, 4, 1), 10 * i, dtype=np.uint8),
            }
        )
    return rows


def test_collate_layout_normalisation_and_zero_padding():
    clips = [np.full((3, 4, 4, 1), 255, np.uint8), np.zeros((1, 4, 4, 1), np.uint8)]
    b = collate(clips, [2, -1], ["a", "b"], epoch=3)
    assert b.videos.shape == (2, 3, 1, 4, 4) and b.videos.dtype == torch.float32
    assert b.lengths.tolist() == [3, 1] and b.lengths.dtype == torch.int64
    assert b.labels.tolist() == [2, -1] and b.keys == ["a", "b"] and b.epoch == 3
    assert torch.all(b.videos[0] == 1.0)
    assert torch.all(b.videos[1, 0] == -1.0)  # a black frame is -1
    assert torch.all(b.videos[1, 1:] == 0.0)  # padding is exactly zero


def test_frame_budget_is_respected_and_nothing_is_lost():
    lengths = [5, 3, 6, 2, 2, 6, 1, 4, 6, 3]
    cfg = data_cfg("unused", frame_budget=12, max_batch_size=3)
    stream = VideoBatchStream(ListSource(_rows(lengths)), cfg)
    batches = list(stream)
    assert all(b.num_frames <= 12 and len(b.keys) <= 3 for b in batches)
    assert [k for b in batches for k in b.keys] == [f"e0s0k{i}" for i in range(10)]
    assert sum(b.num_frames for b in batches) == sum(lengths)
    assert any(len(set(b.lengths.tolist())) > 1 for b in batches)  # lengths are mixed
    # greedy: a batch only closes when the next clip would not fit
    for b, nxt in zip(batches, batches[1:]):
        assert b.num_frames + int(nxt.lengths[0]) > 12 or len(b.keys) == 3


def test_batches_never_mix_epochs():
    rows = _rows([2, 2], epoch=0) + _rows([2, 2], epoch=1)
    batches = list(VideoBatchStream(ListSource(rows), data_cfg("unused", frame_budget=12)))
    assert [(b.epoch, len(b.keys)) for b in batches] == [(0, 2), (1, 2)]


def test_bad_rows_are_counted_not_batched():
    rows = _rows([2, 2, 2, 2], status={1: "bad_video", 3: "too_short"})
    stream = VideoBatchStream(ListSource(rows), data_cfg("unused"))
    keys = [k for b in stream for k in b.keys]
    assert keys == ["e0s0k0", "e0s0k2"]
    assert stream.skipped == {"bad_video": 1, "too_short": 1}
    assert stream.cursor.positions == (Position(1),)  # the end: bad rows count as consumed
    assert stream.cursor.skipped == ((0, "bad_video", 1), (0, "too_short", 1))
    assert stream.cursor.samples == ((0, 2),)


def test_oversized_clip_is_an_error():
    with pytest.raises(ValueError, match="frame_budget"):
        FrameBudgetBatcher(4, 8).push(_rows([5])[0])


def test_cursor_moves_to_the_first_row_of_the_next_batch():
    rows = _rows([4, 4, 4, 4, 4], status={2: "bad_video"})
    stream = VideoBatchStream(ListSource(rows), data_cfg("unused", frame_budget=8))
    it = iter(stream)
    first = next(it)
    assert first.keys == ["e0s0k0", "e0s0k1"]
    # k2 (bad) was met before k3, the row that did not fit: both are in the cursor
    assert stream.cursor.positions == (Position(0, 0, 3),)
    assert stream.cursor.skipped == ((0, "bad_video", 1),)
    assert stream.cursor.samples == ((0, 2),)
    assert [b.keys for b in it] == [["e0s0k3", "e0s0k4"]]
    assert stream.cursor.positions == (Position(1),)  # data.epochs = 1: finished


def test_cursor_carries_shard_issues_once_per_shard():
    rows = _rows([2, 2], shard=0) + _rows([2], shard=1)
    rows[0]["shard_issue"] = "size_mismatch,sha256_mismatch"
    stream = VideoBatchStream(ListSource(rows), data_cfg("unused"))
    list(stream)
    assert stream.cursor.skipped == ((0, "sha256_mismatch", 1), (0, "size_mismatch", 1))
