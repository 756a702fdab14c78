"""End to end on the real components: 2 Ray Train workers, DeepSpeed ZeRO-2 over gloo,
checkpoints on the moto S3 server, a loopback MLflow server; a worker killed mid-run;
a crash mid-save; a new run resumed from a checkpoint. Losses must match exactly.

Data: 8 shards of 4 four-frame clips and a batch of exactly 4 clips, so one batch is
one shard and the split between the two workers is the same after any resume.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from flowception.cluster import checkpoint, safe_io
from flowception.cluster.config import load_config
from flowception.cluster.launch import launch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
LOGGED = ("loss", "loss_velocity", "loss_insertion", "lr", "grad_norm", "visible_fraction")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from flowception.pipelines.sources import moving_mnist, write_clips

    out = tmp_path_factory.mktemp("shards")
    write_clips(
        moving_mnist(32, size=32, min_frames=4, max_frames=4, seed=0), str(out), max_samples=4
    )
    return out


@pytest.fixture(scope="module")
def services(s3_endpoint, mlflow_server, ray_local):
    """S3 first: its environment must exist before Ray starts its workers."""
    import s3fs

    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(bucket)
    return {"s3": s3_endpoint, "bucket": f"s3://{bucket}", "mlflow": mlflow_server}


def _cfg(shards, services, name: str, storage: str, *extra: str):
    return load_config(
        ROOT / "configs/demo-cpu.yaml",
        [
            f"data.shards={shards}",
            "data.num_frames=4",
            "data.frame_budget=16",
            "data.max_batch_size=4",
            "data.epochs=4",
            "data.clip_start=first",
            "steps=6",
            "optim.warmup_steps=3",
            "checkpoint.every_steps=3",
            "checkpoint.keep=null",
            "tracking.log_every=1",
            "tracking.sample_every=6",
            "tracking.num_samples=1",
            "tracking.sample_steps=4",
            "method.max_frames=6",
            f"tracking.tracking_uri={services['mlflow']}",
            "tracking.experiment=test-train",
            "cluster.num_workers=2",
            "cluster.cpus_per_worker=0.5",
            "cluster.max_failures=1",
            "deepspeed.zero_stage=2",
            f"cluster.storage_path={storage}",
            f"cluster.name={name}",
            *extra,
        ],
    )


def _history(services, run_id: str, key: str) -> dict[int, float]:
    import mlflow

    client = mlflow.MlflowClient(services["mlflow"])
    rows = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in rows}  # a restarted step keeps its last value


@pytest.fixture(scope="module")
def run_a(shards, services):
    cfg = _cfg(
        shards,
        services,
        "a",
        f"{services['bucket']}/runs",
        f"cluster.storage_endpoint_url={services['s3']}",
    )
    return cfg, launch(cfg)


def test_zero2_run_on_s3_logs_to_mlflow(run_a, services):
    import mlflow

    cfg, result = run_a
    assert result.run_uri == f"{services['bucket']}/runs/a"
    steps = [s for s, _ in checkpoint.list_checkpoints(result.run_uri, services["s3"])]
    assert steps == [3, 6]
    assert result.checkpoint == f"{result.run_uri}/step_0000006"
    assert result.metrics["step"] == 6

    client = mlflow.MlflowClient(services["mlflow"])
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert run.data.tags["config_hash"] == cfg.hash()
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    for key in (*LOGGED, "visible_tokens_per_s", "mfu_cpu"):
        history = _history(services, result.mlflow_run_id, key)
        assert sorted(history) == [1, 2, 3, 4, 5, 6], key
        assert all(v == v for v in history.values()), key  # finite, not NaN
    lr = _history(services, result.mlflow_run_id, "lr")
    assert lr[1] < lr[2] < lr[3]  # warmup
    assert 0 < _history(services, result.mlflow_run_id, "visible_fraction")[3] <= 1
    assert _history(services, result.mlflow_run_id, "mfu_cpu")[3] > 0
    calibration = _history(services, result.mlflow_run_id, "diag/rate_calibration")
    assert calibration and all(0 < v < 10 for v in calibration.values())
    samples = client.list_artifacts(result.mlflow_run_id, "samples/step_0000006")
    assert [f.path.rsplit("/", 1)[1] for f in samples] == ["sample_0.gif"]
    assert samples[0].file_size > 0


def test_export_loads_for_inference(run_a, services, tmp_path):
    from flowception.model.config import model_config
    from flowception.model.generate import generate

    cfg, result = run_a
    net, loaded = checkpoint.load_inference_model(result.export, endpoint_url=services["s3"])
    assert loaded == cfg and not net.training
    local = checkpoint.fetch(result.checkpoint, services["s3"], dest=tmp_path / "ckpt")
    ema = safe_io.load_tree(local / checkpoint.EMA_FILE)["shadow"]  # safetensors + JSON
    for k, v in net.state_dict().items():
        assert torch.equal(v, ema[k].to(v.dtype)), k
    raw, _ = checkpoint.load_inference_model(
        result.checkpoint, weights="raw", endpoint_url=services["s3"]
    )
    assert any(not torch.equal(raw.state_dict()[k], v) for k, v in net.state_dict().items())
    out = generate(
        net,
        method=cfg.method,
        num_videos=1,
        generator=torch.Generator().manual_seed(0),
        num_steps=2,
    )
    assert out.videos[0].shape[1:] == (1, 32, 32)
    with pytest.raises(ValueError, match="width: 32 != 64"):
        checkpoint.load_inference_model(
            result.export,
            expected=model_config("tiny", frame_size=(32, 32), width=64),
            endpoint_url=services["s3"],
        )


def test_killed_worker_resumes_with_the_same_losses(run_a, shards, services, tmp_path):
    _, a = run_a
    marker = tmp_path / "fault-fired"
    cfg = _cfg(shards, services, "b", str(tmp_path / "runs"))
    b = launch(cfg, worker_env={"FLOWCEPTION_FAULT": f"step:5:1:{marker}"})
    assert marker.exists()  # rank 1 really died after step 5
    assert [s for s, _ in checkpoint.list_checkpoints(b.run_uri)] == [3, 6]
    for key in LOGGED:
        assert _history(services, b.mlflow_run_id, key) == _history(
            services, a.mlflow_run_id, key
        ), key


def test_resume_from_checkpoint_with_crash_mid_save(run_a, shards, services, tmp_path):
    _, a = run_a
    marker = tmp_path / "fault-fired"
    cfg = _cfg(
        shards,
        services,
        "c",
        str(tmp_path / "runs"),
        f"checkpoint.resume_from={a.run_uri}/step_0000003",
    )
    c = launch(cfg, worker_env={"FLOWCEPTION_FAULT": f"save:6:0:{marker}"})
    assert marker.exists()  # rank 0 died while writing step 6: it never looked complete,
    # the restart resumed from run a's step 3 again and wrote step 6 whole
    assert [s for s, _ in checkpoint.list_checkpoints(c.run_uri)] == [6]
    a_loss = _history(services, a.mlflow_run_id, "loss")
    c_loss = _history(services, c.mlflow_run_id, "loss")
    assert sorted(c_loss) == [4, 5, 6]
    assert c_loss == {s: a_loss[s] for s in (4, 5, 6)}


def test_non_finite_loss_stops_the_run_naming_the_step(shards, services, tmp_path):
    import mlflow
    import ray.train

    cfg = _cfg(
        shards, services, "nan", str(tmp_path / "runs"),
        "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0", "cluster.max_failures=0",
        "tracking.sample_every=0",
    )  # fmt: skip
    with pytest.raises(ray.train.TrainingFailedError, match=r"non-finite loss at step \d"):
        launch(cfg)
    client = mlflow.MlflowClient(services["mlflow"])
    runs = client.search_runs(
        [client.get_experiment_by_name("test-train").experiment_id],
        filter_string="attributes.run_name = 'nan'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_sweep_evaluates_each_checkpoint_once(run_a, services, i3d_weights, tmp_path):
    """`flowception sweep` on the S3 run: both checkpoints evaluated, a second call does nothing."""
    import mlflow

    from flowception.eval.sweep import run_sweep

    cfg, result = run_a
    overrides = [
        f"eval.detector={i3d_weights}", "eval.metrics=[length, temporal_flickering]",
        f"shards={cfg.data.shards}", "num_videos=2", "batch_size=2", f"output_dir={tmp_path}",
        f"endpoint_url={services['s3']}", "sampler.num_steps=3",
    ]  # fmt: skip
    first = run_sweep(result.run_uri, overrides)
    assert [r.step for r in first] == [3, 6]
    assert all("length/mean_generated" in r.metrics for r in first)
    assert run_sweep(result.run_uri, overrides) == []

    client = mlflow.MlflowClient(services["mlflow"])
    history = client.get_metric_history(result.mlflow_run_id, "eval/length/mean_generated")
    assert sorted(m.step for m in history) == [3, 6]
