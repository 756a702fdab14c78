"""The per-worker plan and the data cursor, without Ray: every sample once per epoch,
for any world size, after any resume or re-split (issue 15 item 4, issue 16 item 1)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from flowception.pipelines.dataset import plan_reads
from flowception.pipelines.ingest import (
    DataCursor,
    Position,
    SplitSpec,
    epoch_units,
    rank_units,
    resplit,
)

SPEC = SplitSpec(num_shards=7, seed=3, shuffle=True, epochs=3)
COUNTS = {s: 3 + (s * 5) % 4 for s in range(SPEC.num_shards)}  # samples per shard: 3..6


def items(cursor: DataCursor, rank: int, world: int, spec: SplitSpec = SPEC):
    """Rank ``rank``'s stream as ``(epoch, unit, shard, pos)``, from its cursor position."""
    out = []
    for epoch, unit, shard, skip in plan_reads(spec, cursor, rank, world):
        for pos in range(COUNTS[shard]):
            if not any(a <= pos < b for a, b in skip):
                out.append((epoch, unit, shard, pos))
    return out


def cut(cursor: DataCursor, world: int, rng: random.Random, spec: SplitSpec = SPEC):
    """Every rank consumes a random prefix of its stream: (consumed items, rank cursors)."""
    consumed, ranks = [], []
    for r in range(world):
        mine = cursor.for_rank(r, world, spec)
        stream = items(mine, r, world, spec)
        k = rng.randint(0, len(stream))
        consumed += [(e, s, p) for e, _, s, p in stream[:k]]
        at = Position(*stream[k][:2], stream[k][3]) if k < len(stream) else Position(spec.epochs)
        ranks.append(mine.moved(r, at))
    return consumed, ranks


def test_ranks_split_every_epoch_into_disjoint_shares():
    for world in (1, 2, 3, 4, 9):
        for epoch in range(SPEC.epochs):
            shares = [u.shard for r in range(world) for u in rank_units(SPEC, epoch, r, world)]
            assert sorted(shares) == list(range(SPEC.num_shards)), (world, epoch)
    orders = {tuple(u.shard for u in epoch_units(SPEC, e)) for e in range(SPEC.epochs)}
    assert len(orders) == SPEC.epochs  # a new seeded order each epoch


def test_plan_is_a_pure_function_of_seed_epoch_world_and_cursor():
    fresh = DataCursor()
    assert items(fresh, 1, 3) == items(DataCursor.from_dict(fresh.to_dict()), 1, 3)
    assert items(fresh, 1, 3) != items(fresh, 1, 2)
    other = SplitSpec(SPEC.num_shards, SPEC.seed + 1, True, SPEC.epochs)
    assert items(fresh, 0, 2) != items(fresh, 0, 2, other)


def test_same_world_resume_continues_each_rank_exactly():
    rng = random.Random(0)
    for _ in range(20):
        world = rng.randint(1, 4)
        whole = {r: items(DataCursor(), r, world) for r in range(world)}
        _, ranks = cut(DataCursor(), world, rng)
        job = DataCursor.from_dict(DataCursor.merge(ranks).to_dict())  # as checkpoints store it
        for r in range(world):
            rest = items(job.for_rank(r, world, SPEC), r, world)
            assert whole[r][len(whole[r]) - len(rest) :] == rest


@pytest.mark.parametrize("old,new", [(2, 3), (3, 2), (4, 1), (1, 4), (3, 5)])
def test_resplit_to_another_world_sees_every_sample_once_per_epoch(old, new):
    rng = random.Random(old * 10 + new)
    everything = Counter(
        (e, s, p) for e in range(SPEC.epochs) for s in range(SPEC.num_shards)
        for p in range(COUNTS[s])
    )  # fmt: skip
    for _ in range(15):
        consumed, ranks = cut(DataCursor(), old, rng)
        job = DataCursor.merge(ranks)
        resumed = DataCursor.from_dict(resplit(job, new, SPEC).to_dict())
        more, again = cut(resumed, new, rng)  # a second resume, then a third world size
        final = resplit(DataCursor.merge(again), old, SPEC)
        rest = [(e, s, p) for r in range(old) for e, _, s, p in items(final, r, old)]
        assert Counter(consumed) + Counter(more) + Counter(rest) == everything


def test_resplit_keeps_counts_once_and_rejects_bad_input():
    a = DataCursor(world=2, positions=(Position(0, 1, 0), None)).counted(
        Counter({(0, "bad_video"): 2}), Counter({0: 5})
    )
    b = DataCursor(world=2, positions=(None, Position(1, 0, 2))).counted(
        Counter({(0, "bad_video"): 1, (1, "empty_shard"): 4}), Counter({0: 3})
    )
    job = DataCursor.merge([a, b])
    assert job.skipped == ((0, "bad_video", 3), (1, "empty_shard", 4))
    assert job.samples == ((0, 8),)
    three = [resplit(job, 3, SPEC).for_rank(r, 3, SPEC) for r in range(3)]
    assert DataCursor.merge(three).skipped == job.skipped  # rank 0 carries the counts
    assert DataCursor.merge(three).samples == job.samples
    with pytest.raises(ValueError, match=r"no cursor for rank\(s\) \[1\]"):
        DataCursor.merge([a])
    with pytest.raises(ValueError, match="unknown key"):
        DataCursor.from_dict({"epoch": 0})
    with pytest.raises(ValueError, match="world=0"):
        resplit(job, 0, SPEC)
