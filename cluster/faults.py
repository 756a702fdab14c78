"""Real faults for the fault-tolerance tests, off unless ``FLOWCEPTION_FAULT`` is set.

``FLOWCEPTION_FAULT="POINT:STEP:RANK:MARKER"`` makes rank ``RANK`` call ``os._exit(1)``
(no cleanup, like a killed process) at ``POINT`` (``step``: after optimiser step
``STEP``; ``save``: in the middle of writing checkpoint ``STEP``) the first time it
gets there; the ``MARKER`` file records that it happened, so the restarted worker
goes on. Only tests set it (through ``RunConfig(worker_runtime_env=...)``).

The point ``upload`` (checkpoint ``STEP`` being uploaded by rank ``RANK``) holds instead
of exiting: the rank writes ``MARKER`` and waits for ``MARKER.go`` while the test breaks
something real (turns the storage endpoint off); an exception of the upload is written
to ``MARKER.failed`` and raised on, so the test knows when to mend it.

``RANK`` ``*`` matches every rank; rank ``r`` then marks ``MARKER.r`` (and
``MARKER.r.failed``) and all wait for the one ``MARKER.go``: a test can hold every
rank's upload before it breaks the storage, so that no rank's upload is in flight.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "FLOWCEPTION_FAULT"


def _fires(point: str, step: int, rank: int) -> tuple[Path, Path] | None:
    """``(marker, go)`` of a matching fault that has not fired yet (now marked as fired):
    this rank's marker file and the ``MARKER.go`` file every held rank waits for."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    want_point, want_step, want_rank, marker = spec.split(":", 3)
    if (want_point, int(want_step)) != (point, step):
        return None
    if want_rank != "*" and int(want_rank) != rank:
        return None
    path = Path(marker if want_rank != "*" else f"{marker}.{rank}")
    if path.exists():
        return None
    path.write_text(f"{point} {step} {rank}\n")
    return path, Path(f"{marker}.go")


@contextlib.contextmanager
def held(point: str, step: int, rank: int, timeout_s: float = 300.0) -> Iterator[None]:
    """Around ``point``: when the fault matches, wait for ``MARKER.go`` before the block
    and record an exception of the block in ``MARKER.failed`` (see module doc)."""
    fired = _fires(point, step, rank)
    if fired is None:
        yield
        return
    path, go = fired
    deadline = time.monotonic() + timeout_s
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield
    except BaseException as exc:
        Path(f"{path}.failed").write_text(f"{type(exc).__name__}: {exc}\n")
        raise


def maybe_die(point: str, step: int, rank: int) -> None:
    """Exit the process at once if the fault spec matches and has not fired yet."""
    if _fires(point, step, rank) is None:
        return
    print(f"[fault] rank {rank} exits at {point} {step} ({ENV})", file=sys.stderr, flush=True)
    os._exit(1)
