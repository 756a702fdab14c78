"""MLflow tracking for training: the run (driver), metrics and sample videos (rank 0).

The driver creates the run once (``create_run``: flattened config as params, git
commit / config hash / run directory as tags) and passes its id to the workers;
rank 0 logs through a ``Tracker``. Worker restarts keep logging into the same run.

Nothing is lost silently. Every metric row, sample video and the run's end status go
first to an on-disk spool under the run directory (``{run dir}/tracking/``; for an
``s3://`` run a local folder, uploaded there when something is left at the end), then
to the server, in order. While the server is away the spool grows (no cap) and is
retried at most every ``RETRY_S`` seconds; when the server is back it is replayed in
order. The run is marked FINISHED only by the spool's last record, so only once
everything before it arrived; otherwise ``close`` reports the run incomplete with the
count still on disk, and ``flowception tracking flush RUN_DIR`` sends it later::

    flowception tracking flush runs/flowception-abc            # MLFLOW_TRACKING_URI
    flowception tracking flush s3://bucket/runs/x --tracking-uri http://mlflow:5000

MLflow's own HTTP retries are turned down (the spool retries) so a dead server costs
seconds per attempt. Never logged: anything whose name looks like a credential
(``SECRET_PARTS``); every value and URI goes through ``flowception.redact``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from flowception.cluster.config import TrackingConfig, TrainConfig
from flowception.redact import redact_text, redact_uri

log = logging.getLogger(__name__)

RETRY_S = 10.0
SECRET_PARTS = ("secret", "password", "token", "credential", "access_key", "api_key")
SPOOL = "tracking"
"""The spool's folder name in the run directory."""
BATCH = 1000  # MLflow's limit of metrics per log_batch
SYSTEM_EVERY_S = 10.0
"""Seconds between two samples of the system metrics rank 0 adds to its rows."""


def system_metrics() -> dict[str, float]:
    """CPU, memory and (where present) GPU use, under MLflow's own ``system/`` names, so the
    UI's System metrics tab shows them; sent through the spool like every other row."""
    import psutil

    mem = psutil.virtual_memory()
    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (mem.total - mem.available) / 2**20,
        "system/system_memory_usage_percentage": mem.percent,
    }
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            free, total = torch.cuda.mem_get_info(i)
            out[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / 2**20
            out[f"system/gpu_{i}_memory_usage_percentage"] = 100.0 * (total - free) / total
            out[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
    except Exception as exc:  # noqa: BLE001 - GPU metrics are optional (no pynvml, no driver)
        log.debug("no GPU system metrics: %s", exc)
    return out


def tracking_uri(cfg: TrackingConfig) -> str | None:
    """The server to use: the config's, else ``MLFLOW_TRACKING_URI``; ``None`` when off.

    Raises:
        ValueError: tracking is enabled but no URI is set anywhere (checked before
            training starts, so a run is never untracked by accident).
    """
    if not cfg.enabled:
        return None
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError(
            "tracking.enabled=true but no tracking URI: set MLFLOW_TRACKING_URI or "
            "tracking.tracking_uri (a server, `flowception mlflow-server`, or a local store "
            "such as sqlite:///mlflow.db), or set tracking.enabled=false"
        )
    return uri


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as strings (MLflow's 6000-char limit), credential-like names dropped and
    credentials inside values (``http://user:pw@host``) redacted."""
    return {
        k: redact_text(str(v))[:6000]
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
    # enough here because the spool keeps everything and retries itself.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # MLflow prints "View run ... at: URL" with the URI's password; we log it redacted.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _experiment_id(client: Any, name: str, tries: int = 4) -> str:
    """The experiment's id (created if new). A server that answers but slowly (a fresh one
    migrating its database on a loaded machine) gets ``tries`` read timeouts; a refused
    connection fails at once."""
    for attempt in range(tries):
        try:
            exp = client.get_experiment_by_name(name)
            return exp.experiment_id if exp else client.create_experiment(name)
        except Exception as exc:
            if "timed out" not in str(exc).lower() or attempt + 1 == tries:
                raise
            log.info("MLflow is slow to answer (%d/%d); asking again", attempt + 1, tries)
    raise AssertionError("unreachable")


def create_run(cfg: TrainConfig, uri: str, *, tags: dict[str, str]) -> str | None:
    """Create the MLflow run with params and tags; ``None`` (and a warning) if unreachable."""
    import mlflow
    from mlflow.entities import Param, RunTag

    _quick_http()
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        exp_id = _experiment_id(client, cfg.tracking.experiment)
        name = cfg.tracking.run_name or cfg.run_name()
        run = client.create_run(exp_id, run_name=name, tags=tags)
        params = [Param(k, v) for k, v in safe_params(cfg.flat()).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        client.log_batch(run.info.run_id, tags=[RunTag("config_hash", cfg.hash())])
    except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop training
        log.warning(
            "MLflow at %s unreachable (%s): training without a tracked run",
            redact_uri(uri),
            redact_text(str(exc)),
        )
        return None
    log.info("MLflow run %s at %s/#/experiments/%s/runs/%s", name, redact_uri(uri).rstrip("/"),
             exp_id, run.info.run_id)  # fmt: skip
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


# --------------------------------------------------------------------------- #
#                     The spool: what the server has not seen yet             #
# --------------------------------------------------------------------------- #


def spool_dir(run_uri: str, run_name: str) -> Path:
    """Where rank 0 spools: ``{run dir}/tracking`` for a local run directory, else a
    local folder named after the run (uploaded to ``{run dir}/tracking`` at the end)."""
    if "://" not in run_uri:
        return Path(run_uri) / SPOOL
    return Path(tempfile.gettempdir()) / "flowception-tracking" / run_name


class Spool:
    """An append-only, on-disk queue of tracking records, sent in order.

    ``records.jsonl`` holds one record a line: ``{"kind": "metrics", "step", "ts",
    "values"}``, ``{"kind": "artifact", "file", "artifact_path"}`` (``file`` copied
    into ``artifacts/``) or ``{"kind": "end", "status"}``; ``sent`` holds how many of
    them reached the server. Once all did, both are emptied.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.records_path, self.sent_path = self.root / "records.jsonl", self.root / "sent"
        self.records: list[dict[str, Any]] = []
        if self.records_path.exists():
            with open(self.records_path) as f:
                self.records = [json.loads(line) for line in f if line.strip()]
        self.sent = int(self.sent_path.read_text()) if self.sent_path.exists() else 0

    @property
    def pending(self) -> list[dict[str, Any]]:
        """The records the server has not acknowledged, oldest first."""
        return self.records[self.sent :]

    def counts(self) -> dict[str, int]:
        """``{"metric rows", "artifacts", "end"}`` still on disk."""
        rows = sum(len(r["values"]) for r in self.pending if r["kind"] == "metrics")
        arts = sum(r["kind"] == "artifact" for r in self.pending)
        return {
            "metric rows": rows,
            "artifacts": arts,
            "end": sum(r["kind"] == "end" for r in self.pending),
        }

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` to disk (flushed) before anything tries to send it."""
        with open(self.records_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def add_file(self, path: Path) -> str:
        """A copy of ``path`` in the spool (the original is a temp file); its spool name."""
        name = f"{len(self.records):07d}/{path.name}"  # the file keeps its name in MLflow
        (self.root / "artifacts" / name).parent.mkdir(exist_ok=True)
        shutil.copyfile(path, self.root / "artifacts" / name)
        return name

    def mark_sent(self, n: int) -> None:
        """``n`` more records reached the server; empty the spool once all did."""
        for record in self.records[self.sent : self.sent + n]:
            if record["kind"] == "artifact":
                shutil.rmtree((self.root / "artifacts" / record["file"]).parent, ignore_errors=True)
        self.sent += n
        if self.sent == len(self.records):
            self.records_path.write_text("")
            self.records, self.sent = [], 0
        tmp = self.sent_path.with_suffix(".tmp")
        tmp.write_text(str(self.sent))
        os.replace(tmp, self.sent_path)

    def send(self, client: Any, run_id: str) -> None:
        """Send the pending records in order; raises at the first that fails (kept)."""
        from mlflow.entities import Metric

        while self.pending:
            first = self.pending[0]
            if first["kind"] == "metrics":
                batch, n = [], 0
                for record in self.pending:
                    if record["kind"] != "metrics" or len(batch) + len(record["values"]) > BATCH:
                        break
                    batch += [Metric(k, v, record["ts"], record["step"])
                              for k, v in record["values"].items()]  # fmt: skip
                    n += 1
                client.log_batch(run_id, metrics=batch)
                self.mark_sent(n)
            elif first["kind"] == "artifact":
                src = self.root / "artifacts" / first["file"]
                client.log_artifact(run_id, str(src), first["artifact_path"])
                self.mark_sent(1)
            else:
                client.set_terminated(run_id, status=first["status"])
                self.mark_sent(1)


# --------------------------------------------------------------------------- #
#                                  Tracker                                    #
# --------------------------------------------------------------------------- #


class Tracker:
    """Rank-0 metric and artifact logging into an existing run, through the spool.

    Args:
        uri: tracking server URI.
        run_id: the run created by ``create_run``.
        spool: the spool folder (``spool_dir``); what an earlier attempt of the same
            run left there is sent first.
    """

    def __init__(self, uri: str, run_id: str, *, spool: Path) -> None:
        import mlflow

        _quick_http()
        self.uri, self.run_id = uri, run_id
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.spool = Spool(spool)
        (self.spool.root / "run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
        self.failures = 0
        self._next_try = 0.0
        self._warned = False
        self._next_system = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Spool one row per metric at ``step`` and try to send everything spooled."""
        values = {k: float(v) for k, v in metrics.items()}
        if time.monotonic() >= self._next_system:
            self._next_system = time.monotonic() + SYSTEM_EVERY_S
            values.update(system_metrics())
        self.spool.append({"kind": "metrics", "step": int(step), "ts": int(time.time() * 1000),
                           "values": values})  # fmt: skip
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str) -> None:
        """Spool a copy of a local file for ``artifact_path/`` and try to send it."""
        path = Path(path)
        name = self.spool.add_file(path)
        self.spool.append({"kind": "artifact", "file": name, "artifact_path": artifact_path})
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what is spooled, in order; ``False`` (all kept on disk) if the server is away."""
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            self.spool.send(self.client, self.run_id)
        except Exception as exc:  # noqa: BLE001 - outages are expected, training goes on
            self.failures += 1
            self._next_try = time.monotonic() + RETRY_S
            if not self._warned:
                log.warning(
                    "MLflow at %s unreachable (%s): spooling to %s, retrying every %.0fs",
                    redact_uri(self.uri), redact_text(str(exc))[:300], self.spool.root, RETRY_S,
                )  # fmt: skip
                self._warned = True
            return False
        self._next_try = 0.0  # reachable: the next row goes out at once
        if self._warned:
            log.warning("MLflow at %s reachable again: spooled records sent", redact_uri(self.uri))
            self._warned = False
        return True

    def close(
        self,
        status: str = "FINISHED",
        *,
        tries: int = 3,
        run_uri: str | None = None,
        endpoint_url: str | None = None,
    ) -> dict[str, int]:
        """Spool the end of the run and send everything (``tries`` attempts).

        Args:
            status: the run's end status, set on the server after everything else.
            tries: send attempts, a second or more apart.
            run_uri: an ``s3://`` run directory gets a copy of what is left.
            endpoint_url: its S3 endpoint.

        Returns:
            What is still on disk (all zero: the run is ``status`` on the server).
            Otherwise the run stays RUNNING there and a warning says how to send the rest.
        """
        self.spool.append({"kind": "end", "status": status})
        for attempt in range(tries):
            if self.flush(force=True):
                break
            if attempt + 1 < tries:
                time.sleep(1.0 + attempt)
        left = self.spool.counts()
        if any(left.values()):
            log.warning(
                "MLflow run %s is INCOMPLETE: %d metric rows, %d artifacts and its end status "
                "are still on disk in %s; send them with `flowception tracking flush RUN_DIR`",
                self.run_id, left["metric rows"], left["artifacts"], self.spool.root,
            )  # fmt: skip
            if run_uri and "://" in run_uri:
                upload_spool(self.spool.root, run_uri, endpoint_url)
        else:
            log.info("MLflow run %s %s at %s", self.run_id, status, redact_uri(self.uri))
        return left


def upload_spool(spool: Path, run_uri: str, endpoint_url: str | None = None) -> None:
    """Copy a local spool to ``{run_uri}/tracking`` (an ``s3://`` run directory)."""
    from flowception.cluster import storage

    fs, path = storage.resolve(run_uri, endpoint_url)
    names = sorted(storage.file_sizes(storage.pafs.LocalFileSystem(), str(spool)))
    storage.upload_files(spool, fs, f"{path}/{SPOOL}", names)


def flush_run(
    run_uri: str, uri: str | None = None, endpoint_url: str | None = None
) -> dict[str, int]:
    """Send what a run's spool still holds (``flowception tracking flush RUN_DIR``).

    Args:
        run_uri: the run directory (local or ``s3://``).
        uri: the tracking server; ``None``: ``MLFLOW_TRACKING_URI``, else the one in
            ``run.json`` when it holds no redacted credential.

    Returns:
        What is still on disk afterwards (all zero: everything arrived).

    Raises:
        FileNotFoundError: the run directory has no spool.
        ValueError: no usable tracking URI.
    """
    import mlflow

    from flowception.cluster import storage

    fs, path = storage.resolve(run_uri, endpoint_url)
    remote = fs.type_name != "local"
    if remote:
        found = bool(storage.file_sizes(fs, f"{path}/{SPOOL}"))
    else:
        found = (Path(path) / SPOOL / "records.jsonl").exists()
    if not found:
        raise FileNotFoundError(f"{run_uri}: no {SPOOL}/ spool (nothing left to send)")
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        try:
            saved = json.loads(storage.read_text(fs, f"{path}/run.json")).get("mlflow_uri")
        except FileNotFoundError:
            saved = None
        if not saved or "***" in saved:
            raise ValueError(
                f"{run_uri}: no tracking URI; pass --tracking-uri or set MLFLOW_TRACKING_URI"
            )
        uri = saved
    _quick_http()
    with contextlib.ExitStack() as stack:
        if remote:  # a local copy, removed at the end (what is left goes back to the bucket)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="flowception-spool-"))
            local = storage.download_dir(fs, f"{path}/{SPOOL}", Path(scratch) / SPOOL)
        else:
            local = Path(path) / SPOOL
        meta = json.loads((local / "run.json").read_text())
        spool = Spool(local)
        try:
            spool.send(mlflow.MlflowClient(tracking_uri=uri), meta["mlflow_run_id"])
        finally:  # what did arrive is recorded, also when the server fails half way
            left = spool.counts()
            if remote:
                if any(left.values()):
                    upload_spool(local, run_uri, endpoint_url)
                else:
                    fs.delete_dir(f"{path}/{SPOOL}")
    return left
