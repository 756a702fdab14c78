"""MLflow tracking against a real loopback server, including an outage (a real TCP cut)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from flowception.cluster.config import load_config
from flowception.cluster.mlflow_server import free_port
from flowception.cluster.tracking import Tracker, create_run, git_commit, safe_params
from tests.fixtures.switch import Switch

ROOT = Path(__file__).resolve().parents[2]


def _cfg(name: str):
    return load_config(
        ROOT / "configs/demo-cpu.yaml",
        ["tracking.experiment=test-tracking", f"cluster.name={name}"],
    )


def test_create_run_logs_params_and_tags(mlflow_server):
    import mlflow

    cfg = _cfg("params")
    run_id = create_run(cfg, mlflow_server, tags={"git_commit": "abc"})
    assert run_id
    run = mlflow.MlflowClient(mlflow_server).get_run(run_id)
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert run.data.tags["config_hash"] == cfg.hash()
    assert run.data.tags["git_commit"] == "abc"
    assert len(run.data.params) == len(cfg.flat())


def test_run_info_reuses_the_run_when_the_server_moved(mlflow_server, tmp_path):
    """A re-run whose local server came back on another port keeps its MLflow run."""
    from flowception.cluster.launch import run_info

    def info(uri: str) -> dict:
        return run_info(load_config(ROOT / "configs/demo-cpu.yaml", [
            "tracking.experiment=test-tracking", "cluster.name=moved",
            f"cluster.storage_path={tmp_path}", f"tracking.tracking_uri={uri}"]))  # fmt: skip

    switch = Switch(mlflow_server)  # a second address for the same server and store
    switch.on()
    try:
        first = info(switch.uri)
    finally:
        switch.off()
    again = info(mlflow_server)
    assert first["mlflow_uri"] == switch.uri and again["mlflow_uri"] == mlflow_server
    assert again["mlflow_run_id"] == first["mlflow_run_id"]

    saved = Path(again["run_uri"]) / "run.json"  # an id this server never saw: a new run
    unknown = "0" * 32
    saved.write_text(saved.read_text().replace(first["mlflow_run_id"], unknown)
                     .replace(mlflow_server, "http://127.0.0.1:1"))  # fmt: skip
    assert info(mlflow_server)["mlflow_run_id"] not in (None, unknown, first["mlflow_run_id"])


def test_create_run_with_server_down_returns_none_quickly():
    t0 = time.monotonic()
    assert create_run(_cfg("down"), f"http://127.0.0.1:{free_port()}", tags={}) is None
    assert time.monotonic() - t0 < 30


def test_no_credentials_in_params():
    params = {
        "data.shards": "s3://b/p",
        "x.aws_secret_access_key": "s",
        "y.api_key": "k",
        "z.TOKEN": "t",
    }
    assert set(safe_params(params)) == {"data.shards"}
    uris = {
        "tracking.tracking_uri": "http://u:MARKER@h:5000",
        "data.s3_endpoint_url": "https://k:MARKER@s3",
    }
    assert safe_params(uris) == {
        "tracking.tracking_uri": "http://u:***@h:5000",
        "data.s3_endpoint_url": "https://k:***@s3",
    }


def test_git_commit_is_head():
    sha = git_commit(ROOT)
    assert len(sha.split("+")[0]) == 40


def test_tracker_buffers_through_an_outage(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setattr("flowception.cluster.tracking.RETRY_S", 0.0)
    run_id = create_run(_cfg("outage"), mlflow_server, tags={})
    switch = Switch(mlflow_server)
    switch.on()
    tracker = Tracker(switch.uri, run_id, spool=tmp_path / "run" / "tracking")
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert not tracker.spool.pending  # sent

    switch.off()  # the server becomes unreachable: training must go on
    t0 = time.monotonic()
    tracker.log_metrics({"loss": 0.5}, step=2)
    video = tmp_path / "sample_0.gif"
    video.write_bytes(b"GIF89a")
    tracker.log_artifact(video, "samples/step_0000002")
    assert time.monotonic() - t0 < 30
    assert tracker.spool.counts() == {"metric rows": 1, "artifacts": 1, "end": 0}
    assert tracker.failures >= 1

    switch.on()  # back: the spooled rows and files arrive
    tracker.log_metrics({"loss": 0.25}, step=3)
    assert tracker.close() == {"metric rows": 0, "artifacts": 0, "end": 0}
    switch.off()
    client = mlflow.MlflowClient(mlflow_server)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == {1: 1.0, 2: 0.5, 3: 0.25}
    names = [f.path for f in client.list_artifacts(run_id, "samples/step_0000002")]
    assert names == ["samples/step_0000002/sample_0.gif"]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_mlflow_server_stops_cleanly(tmp_path):
    import urllib.request

    from flowception.cluster.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "m") as uri:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as resp:
            assert resp.status == 200
    port = int(uri.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    assert (tmp_path / "m" / "mlflow.db").exists()


def _group_commands(marker: str) -> list[str]:
    """Command lines of the process group led by the process whose command line has ``marker``."""
    import os

    def cmdline(pid: str) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended since the listing
            return ""

    commands = {p: cmdline(p) for p in os.listdir("/proc") if p.isdigit()}
    (leader,) = [p for p, c in commands.items() if marker in c and " server " in c]
    out = []
    for pid, command in commands.items():
        try:
            if os.getpgid(int(pid)) == int(leader):
                out.append(command)
        except ProcessLookupError:
            pass
    return out


def test_mlflow_server_runs_no_job_consumers(tmp_path):
    """The server's process group is the server and its uvicorn worker: MLflow's job runner
    and its seven polling ``huey`` consumers (half a core when idle) are not started."""
    from flowception.cluster.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "quiet"):
        time.sleep(6)  # MLflow starts its consumers a few seconds after the runner
        commands = _group_commands(str(tmp_path / "quiet"))
    assert any("uvicorn" in c for c in commands), commands
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
    assert len(commands) == 2, commands


def test_tracker_logs_system_metrics_under_mlflow_names(mlflow_server, tmp_path, monkeypatch):
    """CPU and memory rows reach the run as MLflow's ``system/`` metrics (the UI's tab)."""
    import mlflow

    monkeypatch.setattr("flowception.cluster.tracking.SYSTEM_EVERY_S", 0.0)
    run_id = create_run(_cfg("system"), mlflow_server, tags={})
    tracker = Tracker(mlflow_server, run_id, spool=tmp_path / "tracking")
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_metrics({"loss": 0.5}, step=2)
    tracker.close()
    client = mlflow.MlflowClient(mlflow_server)
    for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == [1, 2], name
        assert all(m.value >= 0 for m in history)
    assert client.get_metric_history(run_id, "system/system_memory_usage_megabytes")[0].value > 0
