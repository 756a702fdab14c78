"""The one place that connects to Ray: ``RAY_ADDRESS`` when set, else a local head.

    RAY_ADDRESS=ray://head:10001 flowception train configs/gpu-2x8.yaml   # a cluster
    flowception train configs/demo-cpu.yaml                              # a local head

The local head keeps its dashboard: Ray Train's placement-group cleaner polls the State
API that the dashboard serves once a second, and without it every training run printed
a "Failed to query Ray Train Controller actor state" warning for each poll. The
dashboard also gives users of a local run the usual view of tasks and actors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def connect(num_cpus: int | None = None, *, address: str | None = None) -> bool:
    """Connect to ``RAY_ADDRESS``, or start a local head, unless Ray is already connected.

    Args:
        num_cpus: CPUs of a local head (``None``: all cores); ignored for a cluster.
        address: ``"local"`` for a new local head whatever ``RAY_ADDRESS`` says;
            ``None`` reads ``RAY_ADDRESS``.

    Returns:
        True when this call connected or started Ray (the caller then owns the shutdown).
    """
    import ray

    if ray.is_initialized():
        return False
    # A driver started by ``uv run`` would otherwise make every worker ``uv run`` too.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    local = address in (None, "local")
    ctx = ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        include_dashboard=True if local else None,
        configure_logging=False,
    )
    if local and ctx.dashboard_url:
        print(f"Ray: local head, dashboard http://{ctx.dashboard_url}", flush=True)
    return True


@contextlib.contextmanager
def ray_session(num_cpus: int | None = 2, *, address: str | None = None) -> Iterator[None]:
    """``connect()`` for the block; shuts Ray down only when the block connected it."""
    import ray

    started = connect(num_cpus, address=address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
