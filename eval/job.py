"""The batched eval job: generate from a checkpoint, extract I3D features, reduce metrics,
log to MLflow. Runs on the connected Ray cluster (``ray.init()`` when none is).

    flowception eval runs/demo/step_0000200                       # defaults
    flowception eval runs/demo/export num_videos=256 actors=2 sampler.num_steps=50
    flowception eval s3://bucket/runs/x/step_0010000 shards=s3://bucket/mm/test \
        eval.protocol.num_real=2048 eval.protocol.num_fake=2048 gpus_per_actor=1

Stages (one Ray Data pipeline each, actors hold one model / one I3D):
[1] eval split rows (flowception.pipelines.dataset) -> conditioning inputs (first frame / keyframes)
[2] GenerationActor pool -> generated videos (variable length)
[3] FeatureActor pool over real and generated videos -> I3D features + per-video metrics
[4] driver: FVD (cached reference statistics), VBench-style scores, length law
[5] MLflow: a child run ``eval-step_XXXXXXX`` under the training run (params: protocol;
    metrics; sample videos, frame grid, length histogram), headline metrics also into
    the training run at the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flowception.eval.config import EvalConfig
from flowception.model.config import ConfigMixin, apply_overrides

log = logging.getLogger("flowception.eval")

EvalTask = Literal["auto", "unconditional", "image_to_video", "interpolation", "continuation"]
SAMPLER_KEYS = ("num_steps", "max_frames", "num_frames", "cfg_scale", "insertion_guidance",
                "insertion_rule", "insertion", "n_start")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EvalJobConfig(ConfigMixin):
    """One evaluation of one checkpoint."""

    checkpoint: str
    """Checkpoint (``step_XXXXXXX``), export directory or run directory; local or ``s3://``."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Detector, FVD protocol and metrics."""
    shards: str | None = None
    """Eval split shards; default: the training shards with a trailing ``train`` -> ``test``."""
    num_videos: int = 64
    """Generated videos (and real eval videos read, unless ``num_real`` says otherwise)."""
    num_real: int | None = None
    """Real videos for the reference statistics; default ``num_videos``."""
    task: EvalTask = "auto"
    """Conditioning of generation; ``auto`` = the training task."""
    sampler: dict[str, Any] = field(default_factory=dict)
    """Overrides of the method's sampler fields (``num_steps``, ``max_frames``, ``cfg_scale``...)."""
    actors: int = 1
    """Generation actors (one model each)."""
    gpus_per_actor: float = 0.0
    """GPUs per generation / feature actor (0 on CPU clusters)."""
    batch_size: int = 4
    """Videos per generation call."""
    seed: int = 0
    """Seed of generation."""
    num_sample_videos: int = 8
    """Generated videos logged as files."""
    data_lengths: bool = False
    """Fixed-length baselines generate each conditioning row's real length (else
    ``method.num_frames``); prescribed insertion orders (E25) always use it as ``L*``."""
    output_dir: str = "outputs/eval"
    """Local folder for the summary, plots and sample videos."""
    run_id: str | None = None
    """MLflow run to log under; default: the training run from the run directory's run.json."""
    tracking_uri: str | None = None
    """MLflow server; default: run.json's, else ``MLFLOW_TRACKING_URI``; none = no logging."""
    endpoint_url: str | None = None
    """S3 endpoint for checkpoints (default: the environment's)."""

    def __post_init__(self) -> None:
        self._check_literals()
        if isinstance(self.eval, dict):
            object.__setattr__(self, "eval", EvalConfig.from_dict(self.eval))
        if not self.checkpoint:
            raise ValueError("EvalJobConfig.checkpoint: required")
        for name in ("num_videos", "actors", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EvalJobConfig.{name}={getattr(self, name)!r}: must be >= 1")
        if self.num_real is not None and self.num_real < 1:
            raise ValueError(f"EvalJobConfig.num_real={self.num_real!r}: must be >= 1")
        unknown = sorted(set(self.sampler) - set(SAMPLER_KEYS))
        if unknown:
            raise ValueError(
                f"EvalJobConfig.sampler: unknown key(s) {unknown}; known: {list(SAMPLER_KEYS)}"
            )


def load_job_config(checkpoint: str, overrides: list[str]) -> EvalJobConfig:
    """``checkpoint`` plus dotted overrides (``eval.protocol.num_real=256``), validated."""
    return EvalJobConfig.from_dict(apply_overrides({"checkpoint": checkpoint}, overrides))


@dataclass(frozen=True)
class EvalResult:
    """Numbers of one evaluation and where its files are."""

    step: int | None
    metrics: dict[str, float]
    params: dict[str, Any]
    output_dir: Path
    mlflow_run_id: str | None
    lengths: list[int]
    data_lengths: list[int]


STEP_RE = re.compile(r"step_(\d+)")


def checkpoint_step(uri: str) -> int | None:
    """The training step in a checkpoint path (``.../step_0001000`` -> 1000)."""
    match = STEP_RE.search(str(uri).rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def run_info(checkpoint: str, endpoint_url: str | None) -> dict[str, Any]:
    """``run.json`` of the run directory holding ``checkpoint`` (or ``{}``)."""
    from flowception.cluster import storage

    for parent in (checkpoint.rstrip("/"), checkpoint.rstrip("/").rsplit("/", 1)[0]):
        try:
            fs, path = storage.resolve(parent, endpoint_url)
            return json.loads(storage.read_text(fs, f"{path}/run.json"))
        except (FileNotFoundError, OSError, ValueError):
            continue
    return {}


def run_eval(cfg: EvalJobConfig, *, progress: bool = True) -> EvalResult:
    """Evaluate one checkpoint (see the module docstring for the stages)."""
    import ray

    from flowception.cluster.checkpoint import load_inference_model
    from flowception.cluster.ray_session import connect
    from flowception.eval.i3d import load_detector

    # [0] fail before any work: weights, checkpoint and its config
    load_detector(cfg.eval.detector, sha256=cfg.eval.detector_sha256)
    _, train_cfg = load_inference_model(cfg.checkpoint, endpoint_url=cfg.endpoint_url)
    task = train_cfg.method.task if cfg.task == "auto" else cfg.task
    method = dataclasses.replace(train_cfg.method, task=task, **cfg.sampler)
    shards = cfg.shards or re.sub(r"train/?$", "test", train_cfg.data.shards)
    data_cfg = dataclasses.replace(train_cfg.data, shards=shards, shuffle=False, clip_start="first",
                                   epochs=1)  # fmt: skip
    step = checkpoint_step(cfg.checkpoint)
    connect()

    # [1] eval split -> real videos and conditioning inputs
    from flowception.pipelines.dataset import build_dataset

    want_real = cfg.num_real or cfg.num_videos
    need = max(want_real, cfg.num_videos)
    rows = build_dataset(data_cfg).filter(lambda r: r["status"] == "ok").limit(need).materialize()
    real_rows = rows.limit(want_real)
    n_ctx = _context_frames(method)
    cond = rows.limit(cfg.num_videos).map(_conditioning, fn_kwargs={"n_ctx": n_ctx})

    # [2] generation actor pool
    from flowception.eval.generate import FeatureActor, GenerationActor

    gen = cond.map_batches(
        GenerationActor,
        fn_constructor_kwargs=dict(checkpoint=cfg.checkpoint, method_overrides={
            "task": task, **cfg.sampler}, seed=cfg.seed, endpoint_url=cfg.endpoint_url,
            data_lengths=cfg.data_lengths),
        compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.batch_size,
        num_gpus=cfg.gpus_per_actor,
        batch_format="numpy",
    ).materialize()  # fmt: skip

    # [3] features and per-video metrics
    feat_kw = dict(compute=ray.data.ActorPoolStrategy(size=1), batch_size=cfg.eval.batch_size, num_gpus=cfg.gpus_per_actor,
                   batch_format="numpy")  # fmt: skip
    ev = cfg.eval.to_dict()
    ref_uri, reference = cached_reference(cfg.eval, data_cfg.to_dict(), want_real)
    if reference is None:  # real clips through I3D (else only their lengths are read)
        real = real_rows.map_batches(
            FeatureActor, fn_constructor_kwargs=dict(eval_cfg=ev, role="real"), **feat_kw
        )
    else:
        real = real_rows.map(_length_only)
    fake = gen.map_batches(
        FeatureActor, fn_constructor_kwargs=dict(eval_cfg=ev, role="fake"), **feat_kw
    )
    real_out, fake_out = real.take_all(), fake.take_all()
    generated = gen.take(cfg.num_sample_videos)

    # [4] reduce on the driver
    if reference is None and ref_uri is not None:
        reference = reference_stats(real_out)
        if reference is not None:
            from flowception.eval.fvd import save_reference

            save_reference(ref_uri, reference[0], cfg.eval.protocol,
                           detector_sha256=_detector_sha(cfg.eval), skipped=reference[1])  # fmt: skip
            log.info("reference statistics cached at %s", ref_uri)
    metrics, params = reduce_metrics(cfg.eval, real_out, fake_out, reference=reference)
    if "fvd" in cfg.eval.metrics:
        params["fvd.reference"] = ref_uri or "computed"
    lengths = [int(r["length"]) for r in fake_out]
    data_lengths = [int(r["length"]) for r in real_out]
    out_dir = Path(cfg.output_dir) / (f"step_{step:07d}" if step is not None else "checkpoint")
    files = write_outputs(out_dir, metrics, params, generated, lengths, data_lengths)

    # [5] MLflow
    run_id = log_to_mlflow(cfg, step, metrics, params, files)
    return EvalResult(step, metrics, params, out_dir, run_id, lengths, data_lengths)


def _context_frames(method) -> int:
    return {"unconditional": 0, "image_to_video": 1, "continuation": method.continuation_frames,
            "interpolation": -1}[method.task]  # fmt: skip


def _conditioning(row: dict[str, Any], n_ctx: int) -> dict[str, Any]:
    """First frame(s) for i2v / continuation, first + last for interpolation, and the
    real video's ``length`` (``L*`` of prescribed insertion orders, spec E25)."""
    video = np.asarray(row["video"])
    if n_ctx == -1:
        ctx = video[[0, -1]]
    else:
        ctx = video[:n_ctx]
    return {"key": row["key"], "label": int(row.get("label", -1)), "context": ctx,
            "length": int(video.shape[0])}  # fmt: skip


def _length_only(row: dict[str, Any]) -> dict[str, Any]:
    """A real video's length, for the length law when its I3D statistics are cached."""
    return {"length": int(np.asarray(row["video"]).shape[0])}


def cached_reference(
    eval_cfg: EvalConfig, data: dict[str, Any], num_real: int
) -> tuple[str | None, tuple[Any, int] | None]:
    """``(uri, (Gaussian, skipped) or None)`` of the real videos' I3D statistics under
    ``eval_cfg.reference_cache``; ``(None, None)`` when there is no cache or no FVD.

    The file name carries the protocol hash and the detector's sha256
    (:func:`eval.fvd.reference_uri`) plus a hash of the data config (shards, size,
    frames) and ``num_real``, so any change that alters the real clips misses the cache.
    """
    if not eval_cfg.reference_cache or "fvd" not in eval_cfg.metrics:
        return None, None
    import hashlib

    from flowception.eval.fvd import load_reference, reference_uri

    text = json.dumps({"data": data, "num_real": num_real}, sort_keys=True, default=str)
    split = "{}-n{}-{}".format(str(data.get("shards", "")).rstrip("/").rsplit("/", 1)[-1] or "data",
                               num_real, hashlib.sha256(text.encode()).hexdigest()[:12])  # fmt: skip
    sha = _detector_sha(eval_cfg)
    uri = reference_uri(eval_cfg.reference_cache, split, eval_cfg.protocol, sha)
    return uri, load_reference(uri, eval_cfg.protocol, detector_sha256=sha)


def reference_stats(real_rows: list[dict]) -> tuple[Any, int] | None:
    """``(Gaussian, skipped)`` of real I3D features; None with fewer than 2 clips."""
    from flowception.eval.fvd import gaussian_from_features

    feats = [r["features"] for r in real_rows if r["has_clip"]]
    if len(feats) < 2:
        return None
    return gaussian_from_features(np.stack(feats)), sum(not r["has_clip"] for r in real_rows)


def reduce_metrics(
    eval_cfg: EvalConfig,
    real_rows: list[dict],
    fake_rows: list[dict],
    *,
    reference: tuple[Any, int] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """FVD from the two feature sets (or the cached ``reference`` statistics of the real
    side), means of per-video scores, the length law."""
    from flowception.eval.fvd import fvd_from_stats, gaussian_from_features
    from flowception.eval.length import length_distribution

    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    wanted = set(eval_cfg.metrics)
    if "fvd" in wanted:
        reference = reference or reference_stats(real_rows)
        ff = [r["features"] for r in fake_rows if r["has_clip"]]
        if reference is None or len(ff) < 2:
            n_real = reference[0].count if reference else sum(r["has_clip"] for r in real_rows)
            raise ValueError(
                f"FVD needs >= 2 clips of {eval_cfg.protocol.num_frames} frames on each side; "
                f"got {n_real} real and {len(ff)} generated"
            )
        res = fvd_from_stats(
            reference[0], gaussian_from_features(np.stack(ff)), eval_cfg.protocol,
            detector_sha256=_detector_sha(eval_cfg), skipped_real=reference[1],
            skipped_fake=sum(not r["has_clip"] for r in fake_rows),
        )  # fmt: skip
        metrics.update(res.metrics())
        params.update(res.params())
    for name, column in (
        ("temporal_flickering", "temporal_flickering"),
        ("motion_smoothness", "motion_smoothness"),
        ("dynamic_degree", "dynamic"),
        ("subject_consistency", "subject_consistency"),
    ):
        if name in wanted:
            values = np.asarray([r[column] for r in fake_rows], dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                metrics[f"vbench/{name}"] = float(values.mean())
    if "length" in wanted:
        stats = length_distribution(
            [int(r["length"]) for r in fake_rows], [int(r["length"]) for r in real_rows]
        )
        metrics.update(stats.metrics())
    return metrics, params


def _detector_sha(eval_cfg: EvalConfig) -> str:
    from flowception.eval.assets import read_bytes, sha256_bytes

    return eval_cfg.detector_sha256 or sha256_bytes(read_bytes(eval_cfg.detector))


def write_outputs(
    out_dir: Path,
    metrics: dict,
    params: dict,
    generated: list[dict],
    lengths: list[int],
    data_lengths: list[int],
) -> list[Path]:
    """summary.json, sample videos, the birth-coloured frame grid and the length histogram."""
    import torch

    from flowception.cluster.videos import write_video
    from flowception.eval.visualize import birth_grid, length_histogram

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps(
            {"metrics": metrics, "params": params, "lengths": lengths}, indent=1, default=str
        )
    )
    files.append(summary)
    videos = [
        torch.as_tensor(np.array(r["video"])).permute(0, 3, 1, 2).float() / 127.5 - 1
        for r in generated
    ]
    births = [torch.as_tensor(np.array(r["birth"])) for r in generated]
    (out_dir / "videos").mkdir(exist_ok=True)
    if videos:
        files.append(birth_grid(videos, births, out_dir / "frame_grid.png"))
        for i, v in enumerate(videos):
            files.append(write_video(v, out_dir / "videos" / f"sample_{i:02d}", fmt="gif"))
    files.append(length_histogram(lengths, data_lengths, out_dir / "length_histogram.png"))
    return files


def log_to_mlflow(
    cfg: EvalJobConfig, step: int | None, metrics: dict, params: dict, files: list[Path]
) -> str | None:
    """A child run under the training run, and the headline metrics in the training run."""
    info = run_info(cfg.checkpoint, cfg.endpoint_url)
    uri = cfg.tracking_uri or info.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        log.warning("no MLflow tracking URI: results only in %s", cfg.output_dir)
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = cfg.run_id or info.get("mlflow_run_id")
    if parent:
        experiment_id = client.get_run(parent).info.experiment_id
    else:
        exp = client.get_experiment_by_name("flowception-eval")
        experiment_id = exp.experiment_id if exp else client.create_experiment("flowception-eval")
    tags = {"flowception.kind": "eval", "flowception.checkpoint": cfg.checkpoint,
            "flowception.eval_step": str(step if step is not None else -1), "flowception.eval_status": "running"}  # fmt: skip
    if parent:
        tags["mlflow.parentRunId"] = parent
    name = f"eval-step_{step:07d}" if step is not None else "eval"
    child = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    from flowception.cluster.config import flatten
    from flowception.cluster.tracking import safe_params

    flat = {**params, **flatten(cfg.to_dict(), "job.")}
    for key, value in safe_params(flat).items():
        client.log_param(child, key, value)
    for key, value in metrics.items():
        client.log_metric(child, key, value, step=step or 0)
        if parent:
            client.log_metric(parent, f"eval/{key}", value, step=step or 0)
    for path in files:
        sub = "videos" if path.parent.name == "videos" else None
        client.log_artifact(child, str(path), sub)
    client.set_tag(child, "flowception.eval_status", "done")
    client.set_terminated(child)
    return child
