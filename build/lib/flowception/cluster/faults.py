"""Real faults for the fault-tolerance tests, off unless ``FLOWCEPTION_FAULT`` is set.

``FLOWCEPTION_FAULT="POINT:STEP:RANK:MARKER"`` makes rank ``RANK`` call ``os._exit(1)``
(no cleanup, like a killed process) at ``POINT`` (``step``: after optimiser step
``STEP``; ``save``: in the middle of writing checkpoint ``STEP``) the first time it
gets there; the ``MARKER`` file records that it happened, so the restarted worker
goes on. Only tests set it (through ``RunConfig(worker_runtime_env=...)``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "FLOWCEPTION_FAULT"


def maybe_die(point: str, step: int, rank: int) -> None:
    """Exit the process at once if the fault spec matches and has not fired yet."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_point, want_step, want_rank, marker = spec.split(":", 3)
    if (want_point, int(want_step), int(want_rank)) != (point, step, rank):
        return
    path = Path(marker)
    if path.exists():
        return
    path.write_text(f"{point} {step} {rank}\n")
    print(f"[fault] rank {rank} exits at {point} {step} ({ENV})", file=sys.stderr, flush=True)
    os._exit(1)
