"""MLflow tracking for training: the run (driver), metrics and sample videos (rank 0).

The driver creates the run once (``create_run``: flattened config as params, git
commit / config hash / run directory as tags) and passes its id to the workers;
rank 0 logs through a ``Tracker``. Worker restarts keep logging into the same run.

If the server is unreachable, training goes on: the tracker warns once, keeps
metric rows in a bounded buffer and artifacts in a list, and retries them on later
calls (at most every ``RETRY_S`` seconds) and at ``close``. MLflow's own HTTP
retries are turned down so a dead server costs seconds, not minutes, per attempt.

Never logged: anything whose name looks like a credential (``SECRET_PARTS``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from flowception.cluster.config import TrackingConfig, TrainConfig

log = logging.getLogger(__name__)

RETRY_S = 10.0
SECRET_PARTS = ("secret", "password", "token", "credential", "access_key", "api_key")


def tracking_uri(cfg: TrackingConfig) -> str | None:
    """The server to use: the config's, else ``MLFLOW_TRACKING_URI``, else ``None`` (off)."""
    if not cfg.enabled:
        return None
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as strings (MLflow's 6000-char limit), credential-like names dropped."""
    return {
        k: str(v)[:6000]
        for k, v in params.items()
        if not any(part in k.lower() for part in SECRET_PARTS)
    }


def git_commit(cwd: Path | None = None) -> str:
    """``HEAD`` of the repository at ``cwd`` (``+dirty`` with local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _quick_http() -> None:
    # MLflow retries a failed request 7 times with backoff (~2 min); one quick try is
    # enough here because the tracker buffers and retries itself.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def create_run(cfg: TrainConfig, uri: str, *, tags: dict[str, str]) -> str | None:
    """Create the MLflow run with params and tags; ``None`` (and a warning) if unreachable."""
    import mlflow
    from mlflow.entities import Param, RunTag

    _quick_http()
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
        name = cfg.tracking.run_name or cfg.run_name()
        run = client.create_run(exp_id, run_name=name, tags=tags)
        params = [Param(k, v) for k, v in safe_params(cfg.flat()).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        client.log_batch(run.info.run_id, tags=[RunTag("config_hash", cfg.hash())])
    except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop training
        log.warning("MLflow at %s unreachable (%s): training without a tracked run", uri, exc)
        return None
    return run.info.run_id


def run_exists(uri: str, run_id: str) -> bool:
    """Whether the server at ``uri`` holds the active run ``run_id``.

    A local server restarted on another port over the same store (every
    ``flowception experiment`` or demo re-run) has a new URI but the same runs.
    """
    import mlflow

    _quick_http()
    try:
        run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown id or unreachable server: start a new run
        return False
    return run.info.lifecycle_stage == "active"


class Tracker:
    """Rank-0 metric and artifact logging into an existing run, resilient to outages.

    Args:
        uri: tracking server URI.
        run_id: the run created by ``create_run``.
        max_buffered: metric rows kept while the server is down (oldest dropped).
    """

    def __init__(self, uri: str, run_id: str, *, max_buffered: int = 10_000) -> None:
        import mlflow

        _quick_http()
        self.uri, self.run_id = uri, run_id
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.metrics: deque = deque(maxlen=max_buffered)
        self.artifacts: list[tuple[str, str]] = []
        self.failures = 0
        self._next_try = 0.0
        self._warned = False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue one row per metric at ``step`` and try to send everything queued."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str) -> None:
        """Queue a local file for ``artifact_path/`` of the run and try to send it."""
        self.artifacts.append((str(path), artifact_path))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what is queued; ``False`` (and everything kept) if the server is down."""
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            while self.metrics:
                batch = [self.metrics[i] for i in range(min(len(self.metrics), 1000))]
                self.client.log_batch(self.run_id, metrics=batch)
                for _ in batch:
                    self.metrics.popleft()
            while self.artifacts:
                path, artifact_path = self.artifacts[0]
                self.client.log_artifact(self.run_id, path, artifact_path)
                self.artifacts.pop(0)
        except Exception as exc:  # noqa: BLE001 - outages are expected, training goes on
            self.failures += 1
            self._next_try = time.monotonic() + RETRY_S
            if not self._warned:
                log.warning(
                    "MLflow at %s unreachable (%s): buffering %d metric rows, retrying every %.0fs",
                    self.uri,
                    exc,
                    len(self.metrics),
                    RETRY_S,
                )
                self._warned = True
            return False
        if self._warned:
            log.warning("MLflow at %s reachable again: buffered metrics sent", self.uri)
            self._warned = False
        return True

    def close(self, status: str = "FINISHED") -> None:
        """Last flush (a few tries) and mark the run terminated."""
        for attempt in range(3):
            if self.flush(force=True):
                break
            time.sleep(1.0 + attempt)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow: could not close run %s (%s)", self.run_id, exc)
