"""The driver: ``TorchTrainer`` for ``train_loop_per_worker`` (each worker reads its own data share), then the export.

    flowception train configs/demo-cpu.yaml                      # local Ray (or RAY_ADDRESS)
    flowception train configs/demo-cpu.yaml steps=50 cluster.name=try1
    flowception train configs/demo-cpu.yaml checkpoint.resume_from=runs/try1/step_0000050

The run directory is ``{cluster.storage_path}/{run name}`` (``cluster.name`` or
``{method}-{config hash}``); starting the same config again continues that run
from its latest complete checkpoint. It holds ``run.json`` (MLflow run id, config
hash, git commit), the ``step_XXXXXXX/`` checkpoints and, at the end, ``export/``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowception.cluster import checkpoint, storage
from flowception.cluster.config import TrainConfig
from flowception.cluster.tracking import create_run, git_commit, run_exists, tracking_uri
from flowception.pipelines.ray_session import connect, starts_local_head
from flowception.redact import redact_uri

log = logging.getLogger("flowception.launch")

# Environment variables handed to the workers when set on the driver. No credentials:
# Ray logs a runtime_env in clear (runtime_env_agent.log); the tracking URI, which may
# hold a password, reaches rank 0 inside the train_loop_config (``run["mlflow_uri"]``).
WORKER_ENV = ("FLOWCEPTION_FAULT", "AWS_ENDPOINT_URL", "AWS_REGION")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind.

    Attributes:
        run_uri: the run directory (local path or ``s3://``).
        checkpoint: URI of the last complete checkpoint.
        export: local directory or URI of the exported weights, if exported.
        mlflow_run_id: the MLflow run, if tracked.
        metrics: rank 0's metrics at the last checkpoint.
        seconds: wall time of ``trainer.fit()``.
    """

    run_uri: str
    checkpoint: str | None
    export: str | None
    mlflow_run_id: str | None
    metrics: dict[str, Any]
    seconds: float


def provenance_commit() -> str:
    """The code's git commit (``+dirty``): taken where the job was submitted
    (``FLOWCEPTION_GIT_COMMIT``, set by ``flowception submit``), else of this checkout."""
    return os.environ.get("FLOWCEPTION_GIT_COMMIT") or git_commit(Path(__file__).resolve().parent)


def provenance_tags(commit: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Version, Source and User columns)."""
    sha, _, dirty = commit.partition("+")
    return {
        "mlflow.source.git.commit": sha,
        "flowception.git_dirty": str(bool(dirty)).lower(),
        "mlflow.source.name": os.environ.get("FLOWCEPTION_SOURCE", "flowception train"),
        "mlflow.source.type": "JOB",
        "mlflow.user": os.environ.get("FLOWCEPTION_USER") or getpass.getuser(),
    }


def check_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint this run continues from, refused here (before any worker starts) when
    the workers could not load it.

    A different ``cluster.num_workers`` is fine (the data cursor is merged over ranks and
    re-split): at ZeRO-0 the optimiser state is whole on every rank; at ZeRO 1-3 each rank
    holds a partition, which the workers re-cut through DeepSpeed's universal checkpoint
    (``checkpoint.to_universal``). Refused: another ZeRO stage, and a ZeRO 1-3 resize of a
    checkpoint written before checkpoints carried the universal info.

    Raises:
        ValueError: a world size or ZeRO stage the checkpoint cannot be resumed with.
        FileNotFoundError: ``checkpoint.resume_from`` holds no complete checkpoint.
    """
    endpoint = cfg.cluster.storage_endpoint_url
    fs, root = storage.resolve(cfg.cluster.storage_path, endpoint)
    run_uri = storage.uri_of(fs, f"{root}/{cfg.run_name()}")
    ckpt = checkpoint.resume_point(run_uri, cfg.checkpoint.resume_from, endpoint)
    if ckpt is None:
        return None
    cfs, path = storage.resolve(ckpt, endpoint)
    manifest = checkpoint.read_manifest(cfs, path) or {}
    problem = checkpoint.resize_problem(manifest, cfg.cluster.num_workers, cfg.deepspeed.zero_stage)
    if problem is not None:
        raise ValueError(f"{ckpt}: {problem}")
    return ckpt


def check_data(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its data checked against the shards' ``index.json``: latent shards need
    ``data.vae`` / ``data.vae_dir`` of the VAE that made them and a model whose
    ``in_channels`` / ``frame_size`` are the latents'; ``data.vae_sha256`` is filled in,
    so the VAE is recorded in the MLflow params and every checkpoint's config."""
    from flowception.pipelines.latents import check_training_data

    data = check_training_data(cfg.data, cfg.model.in_channels, cfg.model.frame_size)
    return cfg.replace(data=data)


READ_TASK_CPUS = 1.0  # Ray Data's default for a read task (``pipelines.dataset``)


def reader_cpu_problem(cfg: TrainConfig, cluster_cpus: float) -> str | None:
    """Why the workers' data readers could never run on a cluster of ``cluster_cpus`` CPUs,
    or ``None``. Each worker reads its shard with Ray Data read tasks of one CPU, scheduled
    beside the workers: when the workers hold every CPU the read task waits forever and so
    does the run (seen: 1 worker with ``cpus_per_worker=2`` on 2 CPUs, no message)."""
    c = cfg.cluster
    held = c.num_workers * c.cpus_per_worker
    if held + READ_TASK_CPUS <= cluster_cpus + 1e-9:
        return None
    return (
        f"cluster.num_workers={c.num_workers} x cluster.cpus_per_worker={c.cpus_per_worker:g} "
        f"hold {held:g} of the cluster's {cluster_cpus:g} CPUs and a data read task needs "
        f"{READ_TASK_CPUS:g} more: lower cluster.cpus_per_worker (threads: OMP_NUM_THREADS)"
    )


def run_info(cfg: TrainConfig) -> dict[str, Any]:
    """Run directory, MLflow run (created or reused from ``run.json``), written to ``run.json``."""
    endpoint = cfg.cluster.storage_endpoint_url
    fs, root = storage.resolve(cfg.cluster.storage_path, endpoint)
    run_path = f"{root}/{cfg.run_name()}"
    info_path = f"{run_path}/run.json"
    try:
        previous = json.loads(storage.read_text(fs, info_path))
    except FileNotFoundError:
        previous = {}
    uri = tracking_uri(cfg.tracking)
    run_id = previous.get("mlflow_run_id")
    if run_id and previous.get("mlflow_uri") != redact_uri(uri):  # same store, new port?
        run_id = run_id if uri and run_exists(uri, run_id) else None
    commit = provenance_commit()
    if uri and run_id is None:
        tags = {
            **provenance_tags(commit),
            "config_hash": cfg.hash(),
            "run_dir": storage.uri_of(fs, run_path),
            "method": cfg.method.method,
        }
        run_id = create_run(cfg, uri, tags=tags)
    info = {
        "run_name": cfg.run_name(),
        "run_uri": storage.uri_of(fs, run_path),
        "config_hash": cfg.hash(),
        "git_commit": commit,
        "mlflow_uri": uri,
        "mlflow_run_id": run_id,
        "created": previous.get("created", time.time()),
    }
    fs.create_dir(run_path, recursive=True)
    written = {**info, "mlflow_uri": redact_uri(uri)}  # the workers get the real one in memory
    storage.write_text(fs, info_path, json.dumps(written, indent=1))
    return info


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute here: Ray tasks and workers run in other directories."""

    def fix(path: str | None) -> str | None:
        return path if path is None or "://" in path else os.path.abspath(path)

    return cfg.replace(
        data=cfg.data.replace(shards=fix(cfg.data.shards), vae_dir=fix(cfg.data.vae_dir)),
        checkpoint=cfg.checkpoint.replace(resume_from=fix(cfg.checkpoint.resume_from)),
        cluster=cfg.cluster.replace(storage_path=fix(cfg.cluster.storage_path)),
    )


def launch(cfg: TrainConfig, *, worker_env: dict[str, str] | None = None) -> TrainResult:
    """Train ``cfg`` on the current Ray cluster (``ray.init()`` if none is connected).

    Args:
        cfg: a validated config.
        worker_env: extra environment variables for the workers (tests: fault spec).

    Returns:
        The run's ``TrainResult``.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from flowception.cluster.submit import check_value
    from flowception.cluster.train_loop import train_loop_per_worker

    for key, value in cfg.flat().items():  # YOUR_BUCKET left in a manifest: refuse, not run
        check_value(key, value)
    tracking_uri(cfg.tracking)  # tracking on without a URI: an error now, before Ray starts
    cfg = absolute_paths(cfg)
    cfg = check_data(cfg)  # latent shards vs model and VAE, before any Ray resource
    endpoint = cfg.cluster.storage_endpoint_url
    resumed = check_resume(cfg)  # fail now, not in the workers (and not max_failures times)
    if resumed:
        log.info("continuing from %s", resumed)
    started = connect()
    problem = reader_cpu_problem(cfg, float(ray.cluster_resources().get("CPU", 0.0)))
    if problem and started and starts_local_head():
        ray.shutdown()  # a local head of fixed size: the run could never read a batch
        raise ValueError(problem)
    if problem:  # a cluster that may add nodes (an autoscaler): say it, do not refuse
        log.warning("%s; the run waits until the cluster grows", problem)
    run = run_info(cfg)
    # Ray Train's controller writes through this one: retried longer (storage module doc)
    fs, root = storage.resolve(
        cfg.cluster.storage_path, endpoint, attempts=storage.CONTROLLER_ATTEMPTS
    )
    env = {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}
    env.update(worker_env or {})
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.cluster.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "run": run},
        torch_config=TorchConfig(
            backend="nccl" if cfg.cluster.use_gpu else "gloo", timeout_s=cfg.cluster.timeout_s
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.num_workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_name(),
            storage_path=root,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception:
        mark_failed(run)
        raise
    seconds = time.perf_counter() - t0
    last = checkpoint.resolve_checkpoint(run["run_uri"], endpoint)
    export = None
    if cfg.checkpoint.export and last:
        export = export_run(last, run, endpoint, name=cfg.tracking.run_name or cfg.run_name())
        log.info("exported weights to %s", export)
    return TrainResult(
        run_uri=run["run_uri"],
        checkpoint=last,
        export=export,
        mlflow_run_id=run["mlflow_run_id"],
        metrics=dict(result.metrics or {}),
        seconds=seconds,
    )


def mark_failed(run: dict[str, Any]) -> None:
    """Close the run's MLflow run as FAILED (the workers could not)."""
    if not run.get("mlflow_run_id"):
        return
    import mlflow

    try:
        mlflow.MlflowClient(run["mlflow_uri"]).set_terminated(run["mlflow_run_id"], "FAILED")
    except Exception as exc:  # noqa: BLE001 - the training error is what matters
        log.warning("MLflow: could not mark run %s failed (%s)", run["mlflow_run_id"], exc)


def export_run(ckpt: str, run: dict[str, Any], endpoint: str | None, *, name: str) -> str:
    """Export ``ckpt`` to ``{run_uri}/export`` (staged locally, then copied when remote) and
    log it to the run's MLflow run as a model registered under ``name``."""
    run_uri = run["run_uri"]
    fs, run_path = storage.resolve(run_uri, endpoint)
    if fs.type_name == "local":
        out = checkpoint.export_weights(ckpt, Path(run_path) / "export", endpoint_url=endpoint)
        register_export(out, run, name)
        return str(out)
    with tempfile.TemporaryDirectory() as tmp:
        out = checkpoint.export_weights(ckpt, Path(tmp) / "export", endpoint_url=endpoint)
        names = sorted(p.name for p in out.iterdir())
        storage.upload_files(out, fs, f"{run_path}/export", names, last="export.json")
        register_export(out, run, name)
    return f"{run_uri}/export"


def register_export(out: Path, run: dict[str, Any], name: str) -> None:
    """Log the export as an MLflow model of the run, registered as ``name`` (if tracked)."""
    if not run.get("mlflow_run_id"):
        return
    from flowception.cluster.registry import log_exported_model

    try:
        log_exported_model(out, run_id=run["mlflow_run_id"], tracking_uri=run["mlflow_uri"],
                           name=name)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the weights are exported; say what is missing
        log.warning("MLflow: export %s not logged as a model (%s); log it again with "
                    "cluster.registry.log_exported_model", out, exc)  # fmt: skip
