"""A local MLflow tracking server: SQLite backend, local artifact store, loopback port.

For local runs and the tests; on a cluster point ``MLFLOW_TRACKING_URI`` at the
team's server instead.

    flowception mlflow-server                       # ./mlruns/, free port, Ctrl-C stops it
    flowception mlflow-server --root /data/mlflow --port 5000
    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
    flowception train configs/demo-cpu.yaml

From Python (the server is stopped, with its workers, when the block exits)::

    with mlflow_server(Path("mlruns")) as uri:
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(root: Path, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line (artifacts proxied through the server)."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        f"sqlite:///{(root / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        str((root / "artifacts").resolve()),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


# MLflow 3's server also starts a job runner with seven ``huey`` consumers (GenAI jobs and
# periodic trace tasks this project never uses); idle, they poll the SQLite store at about
# half a core (29.1 CPU-seconds a minute in the consumers on this 2-core machine, against
# 0.2 in uvicorn without them: ``benchmarks/cpu_during.py``, README "Tests and CI").
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def server_env() -> dict[str, str]:
    """The server's environment: job execution off unless the caller's environment sets it."""
    return {**os.environ, JOBS_ENV: os.environ.get(JOBS_ENV, "false")}


def wait_healthy(uri: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``{uri}/health`` until it answers ``OK``.

    Raises:
        RuntimeError: the server exited, or did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {uri} not healthy after {timeout:.0f}s")


def stop(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """Stop the server and its workers (its own process group); SIGKILL after ``timeout``.

    uvicorn waits for kept-alive client connections on SIGTERM, hence the short grace.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout: float = 90.0,
    log_file: Path | None = None,
) -> Iterator[str]:
    """Run ``mlflow server`` for the duration of the block; yields its ``http://`` URI.

    Args:
        root: holds ``mlflow.db`` and ``artifacts/`` (created).
        host: interface to bind (loopback by default).
        port: port to listen on; ``None`` picks a free one.
        timeout: seconds to wait for ``/health``.
        log_file: server stdout/stderr (default ``root/server.log``).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    uri = f"http://{host}:{port}"
    log_path = log_file or root / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            server_command(root, host, port),
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches the workers
        )
        try:
            wait_healthy(uri, proc, timeout)
            yield uri
        finally:
            stop(proc)
