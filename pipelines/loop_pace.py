"""Pace Ray Data's scheduling loop so that it does not spin while the consumer is busy.

Ray Data's executor thread blocks in ``ray.wait`` (up to 0.1 s) for its running read
tasks. A read task is a streaming generator, ready as soon as it has produced a block;
when backpressure keeps the executor from taking that block (the training step has not
taken the queued batches yet), ``ray.wait`` returns at once, every step of the loop
does nothing, and the thread spins. Measured on this machine (``benchmarks/loop_pace.py``,
a consumer taking a batch every 0.3 s): the executor thread used 92% of a core. Inside
a Ray Train worker on 2 cores it took 56% of a core while the training thread got 29%
(per-thread CPU ticks from ``/proc/<pid>/task``, 10 s of ``configs/demo-latent-cpu.yaml``).

``LoopPace`` is an execution callback (``DataContext.custom_execution_callback_classes``;
Ray calls it once per loop step) that spaces the steps at least ``MIN_STEP_S`` apart: a
step that waited in ``ray.wait`` is not delayed, a spinning loop polls ~100 times a
second instead of thousands, and a ready block waits at most ``MIN_STEP_S``, less than
the ``ray.wait`` timeout Ray uses itself.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

MIN_STEP_S = 0.01


class LoopPace(ExecutionCallback):
    """Sleep until ``MIN_STEP_S`` has passed since the previous loop step."""

    def __init__(self) -> None:
        self._last = 0.0

    def on_execution_step(self, executor: Any) -> None:
        now = time.perf_counter()
        wait = self._last + MIN_STEP_S - now
        if wait > 0:
            time.sleep(wait)
            now += wait
        self._last = now


def install(context: Any) -> None:
    """Add ``LoopPace`` to a dataset's ``DataContext`` (once)."""
    classes = list(context.custom_execution_callback_classes)
    if LoopPace not in classes:
        context.custom_execution_callback_classes = [*classes, LoopPace]


def thread_cpu_seconds(prefix: str = "StreamingExecutor") -> float:
    """CPU seconds used so far by this process's threads whose name starts with ``prefix``
    (Ray Data names its executor threads ``StreamingExecutor-<dataset>``), from
    ``/proc/self/task/<tid>/stat``; 0 where ``/proc`` is not there."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for t in threading.enumerate():
        if not (t.name.startswith(prefix) and t.native_id):
            continue
        try:
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
        except OSError:
            continue
        utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
        total += (int(utime) + int(stime)) / tick
    return total
