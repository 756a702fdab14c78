"""The one place that connects to Ray: ``RAY_ADDRESS`` when set, else a local head.

    RAY_ADDRESS=ray://head:10001 flowception train configs/gpu-2x8.yaml   # a cluster
    flowception train configs/demo-cpu.yaml                              # a local head

The local head keeps its dashboard: Ray Train's placement-group cleaner polls the State
API that the dashboard serves once a second, and without it every training run printed
a "Failed to query Ray Train Controller actor state" warning for each poll. The
dashboard also gives users of a local run the usual view of tasks and actors.

A local head listens on loopback only: every Ray service (GCS, raylet, object
manager, dashboard and its agents, runtime-env agent, workers) binds to
``127.0.0.1``, so nobody else on the network can submit work to it. Ray's servers
listen on localhost only when the node's address is ``127.0.0.1``, but
``ray.init(_node_ip_address="127.0.0.1")`` is turned back into the machine's address;
Ray keeps a node on loopback only in its single-machine mode (the one it uses on
macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which ``loopback_only``
switches on for this process and the ones Ray starts. To let
other machines reach it, ask for it: ``FLOWCEPTION_RAY_HOST=<this machine's IP>``
(Ray's default behaviour: its servers then listen on every interface). A cluster (``RAY_ADDRESS``) is configured by
whoever started it.

A local head also checks ``kernel.pid_max``. Ray's workers create thousands of
threads, which draw their ids from the same pool as processes; with the old default of
32768 the ids wrap every minute or two. The raylet force-kills a worker that has not
exited 5 s after its shutdown by pid, and once that pid has been handed to a thread of
a new worker, it kills the new one: an 8-training experiment here lost its
``TrainController`` that way ("Worker with PID=13652 did not exit after 5000ms, force
killing with SIGKILL", then ``ActorDiedError``). Most 64-bit distributions set 4194304.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("flowception.ray")

PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")
MIN_PID_MAX = 4_194_304
"""Below this, ``check_pid_max`` warns (the value 64-bit systemd distributions set)."""
HOST_ENV = "FLOWCEPTION_RAY_HOST"
"""The address a local head binds to; default loopback (``LOOPBACK``)."""
LOOPBACK = "127.0.0.1"


def local_host() -> str:
    """Where a local head listens: ``FLOWCEPTION_RAY_HOST`` if set, else ``127.0.0.1``."""
    return os.environ.get(HOST_ENV) or LOOPBACK


def loopback_only() -> None:
    """Ray's single-machine mode: the node's address is ``127.0.0.1``, so the GCS, the
    raylet and the agents bind to loopback (see the module docstring)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # this one (read when ray was imported)


def check_pid_max(path: Path = PID_MAX_FILE) -> int | None:
    """Warn when ``kernel.pid_max`` is low enough for Ray to kill a reused pid.

    Returns:
        The value read, or ``None`` where the file does not exist (not Linux).
    """
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if value < MIN_PID_MAX:
        log.warning(
            "kernel.pid_max is %d: process ids wrap quickly under Ray, and the raylet can "
            "SIGKILL a live worker that reused an exited worker's pid (ActorDiedError); "
            "raise it with `sudo sysctl -w kernel.pid_max=%d`",
            value, MIN_PID_MAX,
        )  # fmt: skip
    return value


def starts_local_head(address: str | None = None) -> bool:
    """Whether ``connect(address=address)`` starts a local head (of this machine's fixed
    size) rather than joining a cluster: ``address`` or ``RAY_ADDRESS`` unset or ``"local"``."""
    return (address or os.environ.get("RAY_ADDRESS")) in (None, "local")


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
    local = starts_local_head(address)
    address = address or os.environ.get("RAY_ADDRESS")
    head: dict = {}
    if local:  # loopback unless asked otherwise
        host = local_host()
        head = {"num_cpus": num_cpus, "include_dashboard": True, "dashboard_host": host}
        if host == LOOPBACK:
            loopback_only()
        else:
            head["_node_ip_address"] = host
    ctx = ray.init(address=address, configure_logging=False, **head)
    if local:
        check_pid_max()
        if ctx.dashboard_url:
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
