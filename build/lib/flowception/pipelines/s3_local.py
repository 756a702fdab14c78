"""A real, local S3 endpoint for tests, benchmarks and demos: ``moto_server`` as a
subprocess on a free loopback port.

    with local_s3() as endpoint:            # "http://127.0.0.1:PORT"
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        ...

The server is terminated (then killed if it lingers) when the block exits, also on
errors. Dummy credentials are only set when none are present, since moto accepts
any. ``moto`` comes with the ``dev`` extra.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(port: int) -> list[str]:
    exe = shutil.which("moto_server") or os.path.join(
        os.path.dirname(sys.executable), "moto_server"
    )
    if os.path.exists(exe):
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def use_dummy_credentials() -> None:
    """Set moto's dummy AWS credentials for variables that are not already set."""
    for key, value in DUMMY_CREDENTIALS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def local_s3(timeout: float = 30.0) -> Iterator[str]:
    """Start ``moto_server`` on a free 127.0.0.1 port and yield its endpoint URL.

    Args:
        timeout: seconds to wait for the server to answer.

    Raises:
        RuntimeError: the server exited or did not answer in time (its output attached).
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    logfile = tempfile.TemporaryFile()  # moto logs every request; a pipe would fill up
    proc = subprocess.Popen(
        _command(port),
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                logfile.seek(0)
                out = logfile.read().decode(errors="replace")
                raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server on {endpoint} did not answer in {timeout}s"
                    ) from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
