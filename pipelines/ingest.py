"""Who reads what: the per-worker work plan and the resumable, re-splittable data cursor.

Each training worker reads its own deterministic share of the shards, so its data
order is a pure function of ``(seed, epoch, world size, cursor)`` and never of timing:

- an epoch's *units* are the shards in a seeded order (``samples.shard_order``), minus
  what the cursor's ``base`` says was already consumed; a unit is one shard plus the
  sample positions to leave out;
- rank ``r`` of ``W`` takes units ``r, r + W, r + 2W, ...`` and reads them in that
  order, the samples of a shard in their seeded order (``dataset.read_shard_rows``);
- the frame-budget batcher (``batching.FrameBudgetBatcher``) is deterministic on
  that stream, so the batches are too.

A rank's progress is one ``Position(epoch, unit, pos)``: every unit before ``unit``
of its epoch-``epoch`` list is consumed, and so is every sample position ``< pos`` of
unit ``unit``. Each rank checkpoints a ``DataCursor`` holding its own position; the
ranks' cursors are merged (``DataCursor.merge``) into the job's cursor, which
resumes the same world size exactly (every rank continues at its position) and
re-splits to any other world size with ``resplit``: what every rank consumed is
folded into ``base`` and the rest of each epoch is dealt out again, so every sample
is still seen exactly once per epoch.

Worker (``cluster.train_loop``)::

    cursor = DataCursor.from_dict(merged) if resuming else DataCursor()
    stream = worker_stream(cfg.data, cursor, rank=rank, world=world)  # VideoBatchStream
    for batch in stream: ...
    stream.cursor.to_dict()                                           # -> checkpoint

Pure Python (no Ray) except ``worker_stream``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowception.pipelines.samples import SHARD_ISSUES, SKIP_REASONS, shard_order

Ranges = tuple[tuple[int, int], ...]


def add_range(ranges: Ranges, a: int, b: int) -> Ranges:
    """``ranges`` with ``[a, b)`` added, merged and sorted."""
    out: list[list[int]] = []
    for lo, hi in sorted([*ranges, (a, b)]):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


# --------------------------------------------------------------------------- #
#                                 The plan                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Consumed:
    """What of one epoch is consumed, whatever the world size.

    Attributes:
        epoch: the epoch.
        done: shards fully consumed.
        partial: ``(shard, ranges)``: half-open sample positions consumed in a started shard.
    """

    epoch: int
    done: tuple[int, ...] = ()
    partial: tuple[tuple[int, Ranges], ...] = ()

    def ranges(self, shard: int) -> Ranges:
        """Consumed positions of a started ``shard`` (``()`` if untouched)."""
        return dict(self.partial).get(shard, ())

    def union(self, other: Consumed) -> Consumed:
        """Both together (same epoch)."""
        done = set(self.done) | set(other.done)
        parts: dict[int, Ranges] = {}
        for s, rs in (*self.partial, *other.partial):
            for a, b in rs:
                parts[s] = add_range(parts.get(s, ()), a, b)
        return Consumed(
            self.epoch,
            tuple(sorted(done)),
            tuple(sorted((s, r) for s, r in parts.items() if s not in done and r)),
        )


@dataclass(frozen=True)
class Unit:
    """One read task: a shard and the sample positions to leave out."""

    shard: int
    skip: Ranges = ()


@dataclass(frozen=True)
class SplitSpec:
    """What the plan depends on besides the cursor (from ``DataConfig`` + the shard list)."""

    num_shards: int
    seed: int
    shuffle: bool
    epochs: int

    @classmethod
    def from_config(cls, cfg: Any, num_shards: int) -> SplitSpec:
        """From a ``DataConfig`` and the number of listed shards."""
        return cls(num_shards, cfg.seed, cfg.shuffle, cfg.epochs)


def epoch_units(spec: SplitSpec, epoch: int, base: Consumed | None = None) -> list[Unit]:
    """All units of ``epoch`` in their seeded order, without what ``base`` consumed."""
    base = base or Consumed(epoch)
    order = shard_order(
        spec.num_shards, seed=spec.seed, epoch=epoch, salt="shards", shuffle=spec.shuffle
    )
    return [Unit(i, base.ranges(i)) for i in order if i not in base.done]


def rank_units(
    spec: SplitSpec, epoch: int, rank: int, world: int, base: Consumed | None = None
) -> list[Unit]:
    """Rank ``rank``'s units of ``epoch`` (every ``world``-th, starting at ``rank``)."""
    return epoch_units(spec, epoch, base)[rank::world]


# --------------------------------------------------------------------------- #
#                                 The cursor                                  #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, order=True)
class Position:
    """Where one rank is: units ``< unit`` of ``epoch`` consumed, and positions ``< pos``
    of unit ``unit``; ``epoch >= SplitSpec.epochs`` means the rank's stream is finished."""

    epoch: int = 0
    unit: int = 0
    pos: int = 0


@dataclass(frozen=True, kw_only=True)
class DataCursor:
    """A job's (or one rank's) progress through the data; a checkpoint stores ``to_dict()``.

    ``world == 0`` is a fresh start (any world size). Otherwise ``positions[r]`` is
    rank ``r``'s position under the split of ``base`` among ``world`` ranks; a single
    rank's cursor has ``None`` at the other ranks' places. Counts (``skipped``,
    ``samples``) are cumulative over the run and summed by ``merge``.
    """

    world: int = 0
    """World size the current split is for (``0``: not started)."""
    base: tuple[Consumed, ...] = ()
    """Per epoch, what was consumed before the current split (by an earlier world size)."""
    positions: tuple[Position | None, ...] = ()
    """Per rank of ``world``, its position (``None``: not this rank's cursor)."""
    skipped: tuple[tuple[int, str, int], ...] = ()
    """``(epoch, reason, count)``: bad samples met so far."""
    samples: tuple[tuple[int, int], ...] = ()
    """``(epoch, count)``: good samples yielded so far."""

    def __post_init__(self) -> None:
        if self.world < 0 or (self.world and len(self.positions) != self.world):
            raise ValueError(
                f"DataCursor: world={self.world!r} with {len(self.positions)} position(s)"
            )

    # -- one rank ------------------------------------------------------------ #

    def base_for(self, epoch: int) -> Consumed:
        """``base`` of ``epoch`` (nothing consumed if absent)."""
        for c in self.base:
            if c.epoch == epoch:
                return c
        return Consumed(epoch)

    def for_rank(self, rank: int, world: int, spec: SplitSpec) -> DataCursor:
        """The cursor rank ``rank`` of ``world`` starts from: this job cursor, re-split
        first if it was written by another world size. The job's earlier counts go to
        rank 0 only, so that summing over ranks counts them once."""
        job = self if self.world == world else resplit(self, world, spec)
        mine = tuple(p if r == rank else None for r, p in enumerate(job.positions))
        if rank == 0:
            return DataCursor(
                world=world, base=job.base, positions=mine, skipped=job.skipped,
                samples=job.samples,
            )  # fmt: skip
        return DataCursor(world=world, base=job.base, positions=mine)

    def position(self, rank: int) -> Position:
        """Rank ``rank``'s position (``Position()`` on a fresh start)."""
        if not self.world:
            return Position()
        p = self.positions[rank]
        if p is None:
            raise ValueError(f"DataCursor: no position for rank {rank}")
        return p

    def moved(self, rank: int, position: Position) -> DataCursor:
        """This cursor with rank ``rank`` at ``position``."""
        positions = list(self.positions)
        positions[rank] = position
        return DataCursor(
            world=self.world, base=self.base, positions=tuple(positions),
            skipped=self.skipped, samples=self.samples,
        )  # fmt: skip

    def counted(self, skipped: Counter, samples: Counter) -> DataCursor:
        """This cursor with ``skipped[(epoch, reason)]`` and ``samples[epoch]`` added."""
        sk = Counter({(e, r): n for e, r, n in self.skipped}) + skipped
        sa = Counter(dict(self.samples)) + samples
        return DataCursor(
            world=self.world, base=self.base, positions=self.positions,
            skipped=tuple(sorted((e, r, n) for (e, r), n in sk.items())),
            samples=tuple(sorted(sa.items())),
        )  # fmt: skip

    # -- the job ------------------------------------------------------------- #

    @staticmethod
    def merge(cursors: Iterable[DataCursor], num_shards: int | None = None) -> DataCursor:
        """The job's cursor from every rank's (same split): positions side by side,
        counts summed. ``num_shards`` is accepted for compatibility and unused."""
        cursors = [c for c in cursors if c.world]
        if not cursors:
            return DataCursor()
        world, base = cursors[0].world, cursors[0].base
        positions: list[Position | None] = [None] * world
        skipped: Counter = Counter()
        samples: Counter = Counter()
        for c in cursors:
            if (c.world, c.base) != (world, base):
                raise ValueError(
                    f"DataCursor.merge: cursors of different splits (world {c.world} vs {world})"
                )
            for r, p in enumerate(c.positions):
                if p is not None:
                    positions[r] = p
            skipped.update({(e, r): n for e, r, n in c.skipped})
            samples.update(dict(c.samples))
        missing = [r for r, p in enumerate(positions) if p is None]
        if missing:
            raise ValueError(f"DataCursor.merge: no cursor for rank(s) {missing} of {world}")
        return DataCursor(world=world, base=base, positions=tuple(positions)).counted(
            skipped, samples
        )

    def consumed(self, epoch: int, spec: SplitSpec) -> Consumed:
        """Everything of ``epoch`` the job consumed (``base`` + every rank's progress)."""
        base = self.base_for(epoch)
        out = base
        for rank, p in enumerate(self.positions):
            if p is None:
                raise ValueError(f"DataCursor.consumed: no position for rank {rank}")
            units = rank_units(spec, epoch, rank, self.world, base)
            if epoch < p.epoch:
                done, part = units, None
            elif epoch == p.epoch:
                done, part = units[: p.unit], units[p.unit] if p.unit < len(units) else None
            else:
                done, part = [], None
            out = out.union(Consumed(epoch, tuple(u.shard for u in done)))
            if part is not None and p.pos > 0:
                out = out.union(
                    Consumed(epoch, (), ((part.shard, add_range(part.skip, 0, p.pos)),))
                )
        return out

    # -- storage ------------------------------------------------------------- #

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "world": self.world,
            "base": [
                {"epoch": c.epoch, "done": list(c.done),
                 "partial": [[s, [list(r) for r in rs]] for s, rs in c.partial]}
                for c in self.base
            ],
            "positions": [None if p is None else [p.epoch, p.unit, p.pos] for p in self.positions],
            "skipped": [list(x) for x in self.skipped],
            "samples": [list(x) for x in self.samples],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataCursor:
        """Inverse of ``to_dict``; unknown keys are a ``ValueError``."""
        known = {"world", "base", "positions", "skipped", "samples"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DataCursor: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(
            world=int(data.get("world", 0)),
            base=tuple(
                Consumed(
                    int(c["epoch"]),
                    tuple(int(s) for s in c["done"]),
                    tuple(
                        (int(s), tuple((int(a), int(b)) for a, b in rs)) for s, rs in c["partial"]
                    ),
                )
                for c in data.get("base", [])
            ),
            positions=tuple(
                None if p is None else Position(*(int(x) for x in p))
                for p in data.get("positions", [])
            ),
            skipped=tuple((int(e), str(r), int(n)) for e, r, n in data.get("skipped", [])),
            samples=tuple((int(e), int(n)) for e, n in data.get("samples", [])),
        )


def resplit(cursor: DataCursor, world: int, spec: SplitSpec) -> DataCursor:
    """The job cursor for ``world`` ranks that continues ``cursor`` (written by any world
    size): what was consumed becomes ``base``, every new rank starts at the first epoch
    not finished by all old ranks, and the rest of each epoch is dealt out again.

    Args:
        cursor: a merged job cursor (``DataCursor.merge``) or a fresh one.
        world: the new world size (``>= 1``).
        spec: shard count, seed, shuffle and epochs of the data.

    Returns:
        A cursor with ``world`` positions; each sample of each epoch is either in its
        ``base`` or in exactly one new rank's units.
    """
    if world < 1:
        raise ValueError(f"resplit: world={world!r}, expected >= 1")
    if not cursor.world:
        return DataCursor(
            world=world, positions=(Position(),) * world, skipped=cursor.skipped,
            samples=cursor.samples,
        )  # fmt: skip
    start = min(p.epoch for p in cursor.positions if p is not None)
    last = max(
        [p.epoch for p in cursor.positions if p is not None] + [c.epoch for c in cursor.base]
    )
    base = []
    for epoch in range(start, min(last, spec.epochs - 1) + 1):
        c = cursor.consumed(epoch, spec)
        if c.done or c.partial:
            base.append(c)
    return DataCursor(
        world=world, base=tuple(base), positions=(Position(start),) * world,
        skipped=cursor.skipped, samples=cursor.samples,
    )  # fmt: skip


# --------------------------------------------------------------------------- #
#                          Counts (bad data, end to end)                      #
# --------------------------------------------------------------------------- #

COUNT_NAMES = ("ok", *SKIP_REASONS, *SHARD_ISSUES)


class UnusableDataError(ValueError):
    """The data yielded no batch, or an epoch had too few good samples."""


def count_vector(cursor: DataCursor, epochs: int) -> list[float]:
    """A cursor's counts as ``epochs x len(COUNT_NAMES)`` numbers (summed over ranks
    with one all-reduce); ``ok`` is good samples, the rest skips / shard issues."""
    out = [0.0] * (epochs * len(COUNT_NAMES))
    col = {n: i for i, n in enumerate(COUNT_NAMES)}
    for epoch, n in cursor.samples:
        if epoch < epochs:
            out[epoch * len(COUNT_NAMES)] += n
    for epoch, reason, n in cursor.skipped:
        if epoch < epochs and reason in col:
            out[epoch * len(COUNT_NAMES) + col[reason]] += n
    return out


def epoch_counts(vector: list[float], epoch: int) -> dict[str, int]:
    """The non-zero counts of one epoch from a (summed) ``count_vector``."""
    row = vector[epoch * len(COUNT_NAMES) : (epoch + 1) * len(COUNT_NAMES)]
    return {n: int(v) for n, v in zip(COUNT_NAMES, row) if v}


def data_metrics(vector: list[float], epochs: int, prefix: str = "data") -> dict[str, float]:
    """Run totals for MLflow: ``data/samples``, ``data/skipped``, ``data/skipped/<reason>``
    (every reason, so resumed and uninterrupted runs log the same keys), and
    ``data/shard_issues/<issue>``."""
    total = Counter()
    for epoch in range(epochs):
        total.update(epoch_counts(vector, epoch))
    out = {f"{prefix}/samples": float(total["ok"])}
    out[f"{prefix}/skipped"] = float(sum(total[r] for r in SKIP_REASONS))
    out.update({f"{prefix}/skipped/{r}": float(total[r]) for r in SKIP_REASONS})
    out.update({f"{prefix}/shard_issues/{i}": float(total[i]) for i in SHARD_ISSUES})
    return out


def check_usable(counts: dict[str, int], epoch: int, min_fraction: float, shards: str) -> float:
    """The share of good samples of a finished epoch; raises below ``min_fraction``.

    Raises:
        UnusableDataError: naming the epoch, the counts by reason and the config key.
    """
    skipped = {r: counts[r] for r in SKIP_REASONS if counts.get(r)}
    total = counts.get("ok", 0) + sum(skipped.values())
    share = counts.get("ok", 0) / total if total else 0.0
    if share < min_fraction:
        raise UnusableDataError(
            f"{shards}: epoch {epoch} had {counts.get('ok', 0)} good samples of {total} "
            f"({share:.1%} < data.min_usable_fraction={min_fraction}); skipped by reason: "
            f"{skipped or 'none'}; run `flowception data check --shards {shards}`"
        )
    return share


def worker_stream(cfg: Any, cursor: DataCursor | None, *, rank: int, world: int) -> Any:
    """Rank ``rank``'s ``VideoBatchStream`` over its own Ray Data reader (see module doc)."""
    from flowception.pipelines.batching import VideoBatchStream
    from flowception.pipelines.dataset import build_dataset, shard_list

    shards = shard_list(cfg)
    mine = (cursor or DataCursor()).for_rank(rank, world, SplitSpec.from_config(cfg, len(shards)))
    ds = build_dataset(cfg, cursor=mine, rank=rank, world=world, shards=shards)
    return VideoBatchStream(ds, cfg, cursor=mine, rank=rank)
