"""End to end on the real components: 2 Ray Train workers, DeepSpeed ZeRO-2 over gloo,
checkpoints on the moto S3 server, a loopback MLflow server; a worker killed mid-run;
the driver killed mid-run; a crash mid-save; S3 gone during a checkpoint upload; a new
run resumed from a checkpoint.
Every logged metric of 30 steps must match the uninterrupted run bit for bit.

Data as it comes: 48 Moving MNIST clips of 2-6 frames (16x16) in 8 shards, with 8 bad
samples mixed in (undecodable MP4s, samples without a video), frame-budget batches of
mixed sizes, 5 epochs; the two workers' shares differ in size.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
TIMING = {"steps_per_s", "time_per_step_s", "visible_tokens_per_s", "mfu_cpu"}  # wall-clock
STEPS = 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from flowception.pipelines import schema
    from flowception.pipelines.decode import encode_mp4
    from flowception.pipelines.shards import ShardWriter
    from flowception.pipelines.sources import moving_mnist

    out = tmp_path_factory.mktemp("shards")
    with ShardWriter(str(out), max_samples=7) as w:
        for i, clip in enumerate(moving_mnist(48, size=16, min_frames=2, max_frames=6, seed=0)):
            t, h, wd, _ = clip.frames.shape
            meta = schema.SampleMeta(clip.fps, t, h, wd, clip.source, label=clip.label)
            w.add(clip.key, encode_mp4(clip.frames, clip.fps), meta)
            if i % 6 == 2:  # a bad sample after every 6th good one
                bad = f"bad_{i:03d}"
                if i % 12 == 2:
                    w.add(bad, b"\x00not an mp4" * 50, meta)
                else:
                    w.add_members(bad, [(schema.member_name(bad, "json"), meta.to_json())])
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
        ROOT / "configs/demo-cpu.yaml", _overrides(shards, services, name, storage, *extra)
    )


def _overrides(shards, services, name: str, storage: str, *extra: str) -> list[str]:
    return [
        f"data.shards={shards}",
        "data.size=16",
        "model.frame_size=[16, 16]",
        "data.num_frames=6",
        "data.frame_budget=12",
        "data.max_batch_size=4",
        "data.epochs=5",
        f"steps={STEPS}",
        "optim.warmup_steps=3",
        "checkpoint.every_steps=10",
        "checkpoint.keep=null",
        "tracking.log_every=1",
        f"tracking.sample_every={STEPS}",
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
    ]


def _history(services, run_id: str, key: str) -> dict[int, float]:
    import mlflow

    client = mlflow.MlflowClient(services["mlflow"])
    rows = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in rows}  # a restarted step keeps its last value


def _same_metrics(services, a_id: str, b_id: str) -> None:
    """Every metric the uninterrupted run logged (but wall-clock rates), bit for bit."""
    import mlflow

    client = mlflow.MlflowClient(services["mlflow"])

    def measured(run_id: str) -> set[str]:  # wall-clock rates and system load left out
        return {
            k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")
        } - TIMING

    keys = measured(a_id)
    assert keys == measured(b_id)
    assert "train_flops" in keys  # the run's cumulative FLOPs continue from the checkpoint
    assert {"loss", "data/skipped/bad_video", "data/skipped/missing_video", "epoch"} <= keys
    differ = {}
    for key in sorted(keys):
        a, b = _history(services, a_id, key), _history(services, b_id, key)
        if a != b:
            differ[key] = sorted(s for s in a.keys() | b.keys() if a.get(s) != b.get(s))
    assert not differ, differ  # metric -> steps that differ


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


def test_zero2_run_on_s3_logs_to_mlflow(run_a, services, torch_extensions):
    import mlflow

    cfg, result = run_a
    # DeepSpeed compiled nothing (its CPU shared-memory all-reduce is for inference only)
    assert sorted(p.name for p in torch_extensions.iterdir()) == []
    assert result.run_uri == f"{services['bucket']}/runs/a"
    steps = [s for s, _ in checkpoint.list_checkpoints(result.run_uri, services["s3"])]
    assert steps == [10, 20, 30]
    assert result.checkpoint == f"{result.run_uri}/step_0000030"
    assert result.metrics["step"] == STEPS

    client = mlflow.MlflowClient(services["mlflow"])
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert run.data.tags["config_hash"] == cfg.hash()
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    for key in (*LOGGED, "visible_tokens_per_s", "mfu_cpu"):
        history = _history(services, result.mlflow_run_id, key)
        assert sorted(history) == list(range(1, STEPS + 1)), key
        assert all(v == v for v in history.values()), key  # finite, not NaN
    lr = _history(services, result.mlflow_run_id, "lr")
    assert lr[1] < lr[2] < lr[3]  # warmup
    assert 0 < _history(services, result.mlflow_run_id, "visible_fraction")[3] <= 1
    assert _history(services, result.mlflow_run_id, "mfu_cpu")[3] > 0
    calibration = _history(services, result.mlflow_run_id, "diag/rate_calibration")
    assert calibration and all(0 < v < 10 for v in calibration.values())
    samples = client.list_artifacts(result.mlflow_run_id, "samples/step_0000030")
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
    assert out.videos[0].shape[1:] == (1, 16, 16)
    with pytest.raises(ValueError, match="width: 32 != 64"):
        checkpoint.load_inference_model(
            result.export,
            expected=model_config("tiny", frame_size=(16, 16), width=64),
            endpoint_url=services["s3"],
        )


def test_bad_samples_are_counted_per_epoch_and_in_the_summary(run_a, services):
    _, a = run_a
    assert a.metrics["data/skipped/bad_video"] > 0 and a.metrics["data/skipped/missing_video"] > 0
    assert a.metrics["data/skipped"] == (
        a.metrics["data/skipped/bad_video"] + a.metrics["data/skipped/missing_video"]
    )
    per_epoch = _history(services, a.mlflow_run_id, "data/epoch/ok")
    assert per_epoch and all(v == 48 for v in per_epoch.values())  # every good clip, once
    bad = _history(services, a.mlflow_run_id, "data/epoch/bad_video")
    missing = _history(services, a.mlflow_run_id, "data/epoch/missing_video")
    assert all(bad[e] + missing[e] == 8 for e in per_epoch)


def test_killed_worker_resumes_with_the_same_metrics(run_a, shards, services, tmp_path):
    _, a = run_a
    marker = tmp_path / "fault-fired"
    cfg = _cfg(shards, services, "b", str(tmp_path / "runs"))
    b = launch(cfg, worker_env={"FLOWCEPTION_FAULT": f"step:15:1:{marker}"})
    assert marker.exists()  # rank 1 really died after step 15
    assert [s for s, _ in checkpoint.list_checkpoints(b.run_uri)] == [10, 20, 30]
    _same_metrics(services, a.mlflow_run_id, b.mlflow_run_id)


def test_killed_driver_resumes_with_the_same_metrics(run_a, shards, services, tmp_path):
    """The driver is SIGKILLed after the step-10 checkpoint; the same command continues."""
    import ray

    _, a = run_a
    runs = tmp_path / "runs"
    args = _overrides(shards, services, "d", str(runs))
    code = (
        "import sys; from flowception.cluster.config import load_config; "
        "from flowception.cluster.launch import launch; "
        f"launch(load_config({str(ROOT / 'configs/demo-cpu.yaml')!r}, sys.argv[1:]))"
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    try:
        deadline = time.monotonic() + 600
        while not (runs / "d" / "step_0000010" / checkpoint.MANIFEST).exists():
            assert driver.poll() is None and time.monotonic() < deadline, "no step 10"
            time.sleep(0.5)
        time.sleep(3)  # a few steps further
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    d = launch(_cfg(shards, services, "d", str(runs)))
    assert [s for s, _ in checkpoint.list_checkpoints(d.run_uri)][-1] == STEPS
    _same_metrics(services, a.mlflow_run_id, d.mlflow_run_id)


def test_failed_checkpoint_upload_fails_the_attempt_and_max_failures_resumes(
    run_a, shards, services, tmp_path
):
    """S3 refuses connections (a forwarder turned off) while the ranks upload checkpoint 20:
    the upload is retried, then fails the attempt; Ray Train restarts it once
    (``max_failures=1``) from checkpoint 10 and the run ends as the uninterrupted one.

    Both ranks are held before their upload starts, so the cut meets no upload in
    flight: a rank whose upload ran into it unheld would fail the attempt and have the
    held one killed before it records its failure (CI saw that race once)."""
    import threading

    from tests.fixtures.switch import Switch

    _, a = run_a
    switch = Switch(services["s3"])
    switch.on()
    held = tmp_path / "upload-held"
    ranks = (0, 1)
    failed = [Path(f"{held}.{r}.failed") for r in ranks]

    def break_storage_during_the_upload() -> None:
        while not all(Path(f"{held}.{r}").exists() for r in ranks):
            time.sleep(0.05)
        switch.off()  # refused from now on, open connections cut
        Path(f"{held}.go").touch()
        while not any(f.exists() for f in failed):
            time.sleep(0.05)
        switch.on()  # back for the restarted attempt

    fault = threading.Thread(target=break_storage_during_the_upload, daemon=True)
    fault.start()
    cfg = _cfg(
        shards, services, "upload", f"{services['bucket']}/runs",
        f"cluster.storage_endpoint_url={switch.uri}",
    )  # fmt: skip
    try:
        b = launch(cfg, worker_env={"FLOWCEPTION_FAULT": f"upload:20:*:{held}"})
    finally:
        switch.off()
    # the first rank to give up met only the outage (storage comes back after it); the
    # other, if it had not finished, may fail otherwise once storage is back
    first = min((f for f in failed if f.exists()), key=lambda f: f.stat().st_mtime_ns)
    assert "Could not connect" in first.read_text()  # retried, then raised
    assert [s for s, _ in checkpoint.list_checkpoints(b.run_uri, services["s3"])] == [10, 20, 30]
    _same_metrics(services, a.mlflow_run_id, b.mlflow_run_id)


def test_resume_from_checkpoint_with_crash_mid_save(run_a, shards, services, tmp_path):
    _, a = run_a
    marker = tmp_path / "fault-fired"
    cfg = _cfg(
        shards,
        services,
        "c",
        str(tmp_path / "runs"),
        f"checkpoint.resume_from={a.run_uri}/step_0000020",
    )
    c = launch(cfg, worker_env={"FLOWCEPTION_FAULT": f"save:30:0:{marker}"})
    assert marker.exists()  # rank 0 died while writing step 30: it never looked complete,
    # the restart resumed from run a's step 20 again and wrote step 30 whole
    assert [s for s, _ in checkpoint.list_checkpoints(c.run_uri)] == [30]
    a_loss = _history(services, a.mlflow_run_id, "loss")
    c_loss = _history(services, c.mlflow_run_id, "loss")
    assert sorted(c_loss) == list(range(21, 31))
    assert c_loss == {s: a_loss[s] for s in range(21, 31)}


def test_zero2_run_resumes_on_another_worker_count(run_a, shards, services, tmp_path):
    """2 workers at ZeRO-2 wrote it; 1 worker continues it: the driver lets it through and
    the worker re-cuts the optimiser partitions through DeepSpeed's universal checkpoint."""
    _, a = run_a
    cfg = _cfg(
        shards,
        services,
        "resized",
        str(tmp_path / "runs"),
        f"checkpoint.resume_from={a.run_uri}/step_0000020",
        "cluster.num_workers=1",
    )
    r = launch(cfg)
    assert [s for s, _ in checkpoint.list_checkpoints(r.run_uri)] == [30]
    manifest = checkpoint.manifest_of(f"{r.run_uri}/step_0000030")
    assert (manifest["world_size"], manifest["zero_stage"]) == (1, 2)
    assert sorted(_history(services, r.mlflow_run_id, "loss")) == list(range(21, 31))


def test_universal_resize_restores_the_optimiser_state_exactly(run_a, tmp_path):
    """The 1-rank engine holds the 2 ranks' fp32 weights and Adam moments, bit for bit."""
    cfg, a = run_a
    endpoint = cfg.cluster.storage_endpoint_url
    local = checkpoint.fetch(f"{a.run_uri}/step_0000020", endpoint, dest=tmp_path / "ckpt")
    probe = Path(__file__).with_name("universal_probe.py")
    out = subprocess.run(
        [sys.executable, str(probe), str(local)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK " in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


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


def test_too_little_usable_data_fails_with_the_counts(shards, services, tmp_path):
    import ray.train

    cfg = _cfg(
        shards, services, "unusable", str(tmp_path / "runs"), "data.min_usable_fraction=0.9",
        "cluster.max_failures=0", "tracking.sample_every=0",
    )  # fmt: skip
    with pytest.raises(ray.train.TrainingFailedError) as err:
        launch(cfg)
    text = str(err.value) + "".join(str(a) for a in getattr(err.value, "args", ()))
    assert "epoch 0 had 48 good samples of 56" in text and "min_usable_fraction=0.9" in text
    assert "'bad_video': 4" in text and "'missing_video': 4" in text


def test_data_without_a_single_good_sample_fails(services, tmp_path):
    import ray.train

    from flowception.pipelines.shards import ShardWriter

    bad = tmp_path / "bad"
    with ShardWriter(str(bad)) as w:
        for i in range(3):
            w.add_members(f"x{i}", [(f"x{i}.json", b"{}"), (f"x{i}.mp4", b"junk")])
    cfg = _cfg(
        bad, services, "nodata", str(tmp_path / "runs"), "data.min_usable_fraction=0",
        "cluster.max_failures=0", "tracking.sample_every=0",
    )  # fmt: skip
    with pytest.raises(ray.train.TrainingFailedError, match="yielded no batch") as err:
        launch(cfg)
    assert "'data/skipped/bad_json': 15.0" in str(err.value)  # 3 samples x 5 epochs


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
    assert [r.step for r in first] == [10, 20, 30]
    assert all("length/mean_generated" in r.metrics for r in first)
    assert run_sweep(result.run_uri, overrides) == []

    client = mlflow.MlflowClient(services["mlflow"])
    history = client.get_metric_history(result.mlflow_run_id, "eval/length/mean_generated")
    assert sorted(m.step for m in history) == [10, 20, 30]
