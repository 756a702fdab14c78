"""Tracking loses nothing: a real MLflow server killed and restarted (same store, same
port) mid-run and at the end; ``flowception tracking flush`` sends what was left."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowception.cluster import tracking
from flowception.cluster.config import load_config
from flowception.cluster.mlflow_server import free_port, mlflow_server
from flowception.cluster.tracking import Spool, Tracker, create_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_system_metrics(monkeypatch):
    """These tests count the rows they log; system metrics (tested in test_tracking) would
    add a sample to the first row."""
    monkeypatch.setattr(tracking, "system_metrics", lambda: {})


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    rows = mlflow.MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in rows)


@pytest.mark.slow
def test_server_killed_mid_run_and_at_the_end(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # a loaded CI machine is slow
    cfg = load_config(ROOT / "configs/demo-cpu.yaml", ["tracking.experiment=outage"])
    store, port = tmp_path / "mlflow", free_port()
    run_dir = tmp_path / "runs" / "r"
    video = tmp_path / "sample_0.gif"
    video.write_bytes(b"GIF89a" + bytes(range(256)))

    # [1] up: steps 1-3 arrive at once
    with mlflow_server(store, port=port, timeout=240) as uri:
        run_id = create_run(cfg, uri, tags={})
        assert run_id
        tracker = Tracker(uri, run_id, spool=tracking.spool_dir(str(run_dir), "r"))
        for step in (1, 2, 3):
            tracker.log_metrics({"loss": 1.0 / step}, step)
        assert tracker.flush(force=True) and not tracker.spool.pending
    # [2] killed: 2500 more rows (more than the old 10,000-row cap? no: more than a
    # batch, in order) and a sample video go to disk, training is not held up
    monkeypatch.setattr(tracking, "RETRY_S", 3600.0)  # one failed try, then no more
    for step in range(4, 2504):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.log_artifact(video, "samples/step_0000010")
    video.unlink()  # the spool holds its own copy
    assert tracker.failures == 1
    assert tracker.spool.counts() == {"metric rows": 2500, "artifacts": 1, "end": 0}
    assert (run_dir / "tracking" / "records.jsonl").exists()  # under the run directory

    # [3] back: replayed in order, then the run goes on; [4] killed again before the end
    with mlflow_server(store, port=port, timeout=240) as uri:
        assert tracker.flush(force=True)
        tracker.log_metrics({"loss": 0.001}, 2504)
        assert not tracker.spool.pending
        assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
    tracker.log_metrics({"loss": 0.0005}, 2505)
    left = tracker.close(tries=2)
    assert left == {"metric rows": 1, "artifacts": 0, "end": 1}  # reported, not lost

    # [5] later: the run is RUNNING (not FINISHED with a hole) until the flush sends the rest
    from flowception.eval.cli import main

    with mlflow_server(store, port=port, timeout=240) as uri:
        client = mlflow.MlflowClient(uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert main(["tracking", "flush", str(run_dir), "--tracking-uri", uri]) == 0
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        history = _history(uri, run_id, "loss")
        assert [s for s, _ in history] == list(range(1, 2506))
        assert history[3] == (4, 0.25)
        arts = client.list_artifacts(run_id, "samples/step_0000010")
        assert [(a.path, a.file_size) for a in arts] == [("samples/step_0000010/sample_0.gif", 262)]
    assert Spool(run_dir / "tracking").pending == []
    assert main(["tracking", "flush", str(tmp_path / "none")]) == 2  # one line, no traceback


def test_tracking_on_without_a_uri_is_an_error(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(ROOT / "configs/demo-cpu.yaml")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI or tracking.tracking_uri"):
        tracking.tracking_uri(cfg.tracking)
    off = load_config(ROOT / "configs/demo-cpu.yaml", ["tracking.enabled=false"])
    assert tracking.tracking_uri(off.tracking) is None
    local = load_config(ROOT / "configs/demo-cpu.yaml", ["tracking.tracking_uri=sqlite:///m.db"])
    assert tracking.tracking_uri(local.tracking) == "sqlite:///m.db"


def test_launch_refuses_before_ray_starts(monkeypatch, tmp_path):
    import ray

    from flowception.cluster.launch import launch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(ROOT / "configs/demo-cpu.yaml", [f"cluster.storage_path={tmp_path}"])
    started = ray.is_initialized()
    with pytest.raises(ValueError, match="tracking.enabled=true but no tracking URI"):
        launch(cfg)
    assert ray.is_initialized() == started


def test_spool_survives_a_restart_of_the_worker(tmp_path):
    """A restarted rank 0 finds what its predecessor spooled and sends it first."""
    spool = Spool(tmp_path / "tracking")
    spool.append({"kind": "metrics", "step": 1, "ts": 1, "values": {"loss": 1.0}})
    spool.append({"kind": "metrics", "step": 2, "ts": 2, "values": {"loss": 0.5}})
    spool.mark_sent(1)
    again = Spool(tmp_path / "tracking")
    assert [r["step"] for r in again.pending] == [2]
    again.mark_sent(1)
    assert Spool(tmp_path / "tracking").pending == []


def test_s3_run_left_records_are_uploaded_and_flushed(
    mlflow_server, s3_bucket, tmp_path, monkeypatch
):
    """An s3:// run spools locally; what is left at the end goes to {run}/tracking/ and
    ``tracking flush`` sends it from there (from any machine), leaving no local copy."""
    import tempfile

    import mlflow

    from flowception.eval.cli import main
    from flowception.pipelines.s3_local import free_port

    run_id = create_run(_cfg_for("s3-left"), mlflow_server, tags={})
    run_uri = f"{s3_bucket}/runs/left"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is away
    tracker = Tracker(dead, run_id, spool=tmp_path / "spool")
    tracker.log_metrics({"loss": 2.0}, 1)
    tracker.log_metrics({"loss": 1.0}, 2)
    left = tracker.close(tries=1, run_uri=run_uri)
    assert left == {"metric rows": 2, "artifacts": 0, "end": 1}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where flush downloads the spool
    assert main(["tracking", "flush", run_uri, "--tracking-uri", dead]) == 1  # still away
    assert main(["tracking", "flush", run_uri, "--tracking-uri", mlflow_server]) == 0
    client = mlflow.MlflowClient(mlflow_server)
    assert _history(mlflow_server, run_id, "loss") == [(1, 2.0), (2, 1.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert main(["tracking", "flush", run_uri, "--tracking-uri", mlflow_server]) == 2  # all sent
    assert list(scratch.iterdir()) == []


def _cfg_for(name: str):
    return load_config(
        ROOT / "configs/demo-cpu.yaml", ["tracking.experiment=outage", f"cluster.name={name}"]
    )
