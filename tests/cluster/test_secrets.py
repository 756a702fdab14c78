"""No secrets in files, params or logs: marker credentials in every place a user can put
a URI (``MLFLOW_TRACKING_URI``, ``tracking.tracking_uri``, ``data.s3_endpoint_url``,
``cluster.storage_endpoint_url``), a real 2-worker training run on a local Ray head
with a real MLflow server, then the run directory, the MLflow store, the Ray session
logs and the console are searched for the marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowception.cluster.config import load_config
from flowception.cluster.mlflow_server import mlflow_server

ROOT = Path(__file__).resolve().parents[2]
MARKER = "Zq7MARKERpw"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from flowception.pipelines import schema
    from flowception.pipelines.decode import encode_mp4
    from flowception.pipelines.shards import ShardWriter
    from flowception.pipelines.sources import moving_mnist

    out = tmp_path_factory.mktemp("shards")
    with ShardWriter(str(out), max_samples=4) as w:
        for clip in moving_mnist(8, size=16, min_frames=2, max_frames=4, seed=0):
            t, h, wd, _ = clip.frames.shape
            meta = schema.SampleMeta(clip.fps, t, h, wd, clip.source, label=clip.label)
            w.add(clip.key, encode_mp4(clip.frames, clip.fps), meta)
    return out


def _with_credentials(uri: str, user: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{user}:{MARKER}@{rest}"


def _files_with(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and MARKER.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def test_marker_credentials_leak_nowhere(tiny_shards, ray_local, tmp_path, monkeypatch, capfd):
    import mlflow

    from flowception.cluster.launch import launch

    store = tmp_path / "mlflow"
    with mlflow_server(store, timeout=240) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", _with_credentials(uri, "envuser"))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        cfg = load_config(ROOT / "configs/demo-cpu.yaml", [
            f"data.shards={tiny_shards}", "data.size=16", "model.frame_size=[16, 16]",
            "data.num_frames=4", "data.frame_budget=8", "data.max_batch_size=2",
            "method.max_frames=4", "steps=2", "optim.warmup_steps=1",
            "checkpoint.every_steps=2", "tracking.log_every=1", "tracking.sample_every=2",
            "tracking.num_samples=1", "tracking.sample_steps=2", "tracking.experiment=secrets",
            f"tracking.tracking_uri={_with_credentials(uri, 'cfguser')}",
            f"data.s3_endpoint_url=http://s3user:{MARKER}@127.0.0.1:9",
            f"cluster.storage_endpoint_url=http://s3user:{MARKER}@127.0.0.1:9",
            "cluster.num_workers=2", "cluster.cpus_per_worker=0.5",
            f"cluster.storage_path={tmp_path / 'runs'}", "cluster.name=secrets",
        ])  # fmt: skip
        result = launch(cfg)
        run = mlflow.MlflowClient(uri).get_run(result.mlflow_run_id)
        assert run.info.status == "FINISHED"  # the credentialled URI worked for the workers
        assert run.data.params["tracking.tracking_uri"] == _with_credentials(
            uri, "cfguser"
        ).replace(MARKER, "***")
        assert sorted(m.step for m in mlflow.MlflowClient(uri).get_metric_history(
            result.mlflow_run_id, "loss")) == [1, 2]  # fmt: skip
    out, err = capfd.readouterr()
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    assert (Path(result.run_uri) / "run.json").exists() and (session / "logs").is_dir()
    leaks = {
        "run directory": _files_with(Path(result.run_uri)),
        "MLflow store": _files_with(store),
        "Ray session logs": _files_with(session / "logs"),
        "console": [s for s in ("stdout", "stderr") if MARKER in {"stdout": out, "stderr": err}[s]],
    }
    assert not any(leaks.values()), leaks
