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
[4] driver: FVD (cached reference statistics) with its reference points, VBench and proxy
    scores and the length law, each for the generated videos and for the real test clips
[5] MLflow: a child run ``eval-step_XXXXXXX`` under the training run (params: protocol;
    metrics; summary table, sample videos, frame grid, length histogram), headline
    metrics also into the training run at the checkpoint's step.

Every number is read against the data, with the same protocol: ``fvd{n}_{f}f`` (the
model) beside ``fvd{n/2}_{f}f/real_floor`` (two disjoint halves of the real clips) and
``fvd{n}_{f}f/static`` (each real video's first frame repeated); ``real/<metric>`` beside
every ``vbench/``, ``proxy/`` and ``length/`` metric. ``summary.md`` shows them side by side.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from flowception.config import Config, apply_overrides
from flowception.eval.config import EvalConfig

log = logging.getLogger("flowception.eval")

EvalTask = Literal["auto", "unconditional", "image_to_video", "interpolation", "continuation"]
SAMPLER_KEYS = ("num_steps", "max_frames", "num_frames", "cfg_scale", "insertion_guidance",
                "insertion_rule", "insertion", "n_start")  # fmt: skip


class EvalJobConfig(Config):
    """One evaluation of one checkpoint."""

    checkpoint: str
    """Checkpoint (``step_XXXXXXX``), export directory or run directory; local or ``s3://``."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Detector, FVD protocol and metrics."""
    shards: str | None = None
    """Eval split shards; default: the training shards with a trailing ``train`` -> ``test``."""
    num_videos: int = 64
    """Generated videos (and real eval videos read, unless ``num_real`` says otherwise)."""
    num_real: int | None = None
    """Real videos for the reference statistics; default ``num_videos``."""
    task: EvalTask = "auto"
    """Conditioning of generation; ``auto`` = the training task."""
    sampler: dict[str, Any] = Field(default_factory=dict)
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
    vae_dir: str | None = None
    """Runs trained on latents: VAE directory to decode with (default: the run's ``data.vae_dir``); its sha256 must be the run's."""

    @model_validator(mode="after")
    def _check(self) -> EvalJobConfig:
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
        return self


def load_job_config(checkpoint: str, overrides: list[str]) -> EvalJobConfig:
    """``checkpoint`` plus dotted overrides (``eval.protocol.num_real=256``), validated."""
    return EvalJobConfig.from_dict(
        apply_overrides({"checkpoint": checkpoint}, overrides, EvalJobConfig)
    )


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
    from flowception.eval.i3d import load_detector
    from flowception.pipelines.ray_session import connect

    # [0] fail before any work: weights, checkpoint and its config
    load_detector(cfg.eval.detector, sha256=cfg.eval.detector_sha256)
    vbench_params = _vbench_params(cfg.eval)
    _, train_cfg = load_inference_model(cfg.checkpoint, endpoint_url=cfg.endpoint_url)
    task = train_cfg.method.task if cfg.task == "auto" else cfg.task
    method = train_cfg.method.replace(task=task, **cfg.sampler)
    shards = cfg.shards or re.sub(r"train/?$", "test", train_cfg.data.shards)
    data_cfg = train_cfg.data.replace(shards=shards, shuffle=False, clip_start="first",
                                   epochs=1)  # fmt: skip
    vae = run_vae(cfg, train_cfg)  # latents: the run's VAE, refused if it differs
    step = checkpoint_step(cfg.checkpoint)
    connect()

    # [1] eval split -> real videos and conditioning inputs
    from flowception.pipelines.dataset import build_dataset

    want_real = cfg.num_real or cfg.num_videos
    need = max(want_real, cfg.num_videos)
    rows = build_dataset(data_cfg).filter(lambda r: r["status"] == "ok").limit(need).materialize()
    real_rows = rows.limit(want_real)
    if vae is not None:  # latent eval split: the real side is decoded by the run's VAE
        from flowception.eval.generate import LatentDecodeActor

        real_rows = real_rows.map_batches(
            LatentDecodeActor, fn_constructor_kwargs={"vae": vae},
            compute=ray.data.ActorPoolStrategy(size=1), batch_size=cfg.batch_size,
            num_gpus=cfg.gpus_per_actor, batch_format="numpy",
        ).materialize()  # fmt: skip
    n_ctx = _context_frames(method)
    cond = rows.limit(cfg.num_videos).map(_conditioning, fn_kwargs={"n_ctx": n_ctx})

    # [2] generation actor pool
    from flowception.eval.generate import FeatureActor, GenerationActor

    gen = cond.map_batches(
        GenerationActor,
        fn_constructor_kwargs=dict(checkpoint=cfg.checkpoint, method_overrides={
            "task": task, **cfg.sampler}, seed=cfg.seed, endpoint_url=cfg.endpoint_url,
            data_lengths=cfg.data_lengths, vae=vae),
        compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.batch_size,
        num_gpus=cfg.gpus_per_actor,
        batch_format="numpy",
    ).materialize()  # fmt: skip

    # [3] features and per-video metrics
    feat_kw = dict(compute=ray.data.ActorPoolStrategy(size=1), batch_size=cfg.eval.batch_size, num_gpus=cfg.gpus_per_actor,
                   batch_format="numpy")  # fmt: skip
    ev = cfg.eval.to_dict()
    ref_uri, reference = cached_reference(cfg.eval, data_cfg.to_dict(), want_real)
    real = real_rows.map_batches(  # FVD features only without a cached reference
        FeatureActor, fn_constructor_kwargs=dict(eval_cfg=ev, role="real",
                                                 fvd_features=reference is None), **feat_kw
    )  # fmt: skip
    fake = gen.map_batches(
        FeatureActor, fn_constructor_kwargs=dict(eval_cfg=ev, role="fake"), **feat_kw
    )
    real_out, fake_out = real.take_all(), fake.take_all()
    generated = gen.take(cfg.num_sample_videos)

    # [4] reduce on the driver
    if reference is None and ref_uri is not None:
        reference = real_reference(cfg.eval, real_out)
        if reference is not None:
            from flowception.eval.fvd import save_reference

            save_reference(ref_uri, reference, cfg.eval.protocol,
                           detector_sha256=_detector_sha(cfg.eval))  # fmt: skip
            log.info("reference statistics cached at %s", ref_uri)
    metrics, params = reduce_metrics(cfg.eval, real_out, fake_out, reference=reference)
    params.update(vbench_params)
    if "fvd" in cfg.eval.metrics:
        params["fvd.reference"] = ref_uri or "computed"
    lengths = [int(r["length"]) for r in fake_out]
    data_lengths = [int(r["length"]) for r in real_out]
    if vae is not None:
        params.update({"vae.kind": vae["kind"], "vae.dir": vae["dir"], "vae.sha256": vae["sha256"]})
        metrics.update(latent_length_metrics(gen, real_rows))
    qualifier = task_qualifier(task, train_cfg.method.task)
    folder = f"step_{step:07d}" if step is not None else "checkpoint"
    out_dir = Path(cfg.output_dir) / (f"{folder}_{qualifier}" if qualifier else folder)
    files = write_outputs(out_dir, metrics, params, generated, lengths, data_lengths)

    # [5] MLflow
    run_id = log_to_mlflow(cfg, step, metrics, params, files, task=task, qualifier=qualifier)
    return EvalResult(step, metrics, params, out_dir, run_id, lengths, data_lengths)


def task_qualifier(task: str, trained: str) -> str | None:
    """The task's name where an evaluation's results are kept apart (output folder, child
    run name, ``eval/<task>/...`` metrics in the training run); ``None`` for the training
    task, whose results keep the plain names."""
    return None if task == trained else task


def run_vae(cfg: EvalJobConfig, train_cfg: Any) -> dict[str, str] | None:
    """``{"kind", "dir", "sha256"}`` of the VAE a latent run is decoded with (``None`` for
    pixel runs): ``vae_dir`` or the run's ``data.vae_dir``, refused when its sha256 is not
    the run's ``data.vae_sha256`` (recorded at launch).

    Raises:
        FileNotFoundError: the VAE directory is missing.
        ValueError: the VAE differs from the run's.
    """
    data = train_cfg.data
    if data.vae == "none":
        return None
    from flowception.pipelines.latents import check_vae_dir, vae_sha256

    path = check_vae_dir(cfg.vae_dir or data.vae_dir, f"vae_dir={cfg.vae_dir or data.vae_dir!r}")
    sha = vae_sha256(path)
    if data.vae_sha256 and sha != data.vae_sha256:
        raise ValueError(
            f"vae_dir={path}: VAE sha256 {sha[:12]} is not the one {cfg.checkpoint} was trained "
            f"with ({data.vae_sha256[:12]}); pass vae_dir= of that VAE"
        )
    return {"kind": data.vae, "dir": path, "sha256": sha}


def latent_length_metrics(gen: Any, real_rows: Any) -> dict[str, float]:
    """The length law in latent frames (``length_latent/...``; ``length/...`` counts video
    frames): with a temporally compressing VAE one latent frame stands for several."""
    from flowception.eval.length import length_distribution

    fake = [int(r["latent_length"]) for r in gen.select_columns(["latent_length"]).take_all()]
    real = [int(r["latent_length"]) for r in real_rows.select_columns(["latent_length"]).take_all()]
    stats = length_distribution(fake, real).metrics()
    return {k.replace("length/", "length_latent/", 1): v for k, v in stats.items()}


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


def cached_reference(
    eval_cfg: EvalConfig, data: dict[str, Any], num_real: int
) -> tuple[str | None, Any]:
    """``(uri, eval.fvd.Reference or None)``: the real videos' I3D statistics under
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


def real_reference(eval_cfg: EvalConfig, real_rows: list[dict]) -> Any:
    """:class:`eval.fvd.Reference` of the real rows: the Gaussian of their I3D features and
    the two reference points (``real_floor``, ``static``); None with fewer than 2 clips."""
    from flowception.eval.fvd import (
        MIN_CLIPS,
        Reference,
        fvd_from_stats,
        gaussian_from_features,
        real_floor,
    )  # fmt: skip

    cov, sha = eval_cfg.protocol.covariance, _detector_sha(eval_cfg)
    kept = [r for r in real_rows if r["has_clip"]]
    if len(kept) < MIN_CLIPS:
        return None
    gaussian = gaussian_from_features(np.stack([r["features"] for r in kept]), cov)
    skipped = len(real_rows) - len(kept)
    baselines: dict[str, float] = {}
    static = gaussian_from_features(np.stack([r["static_features"] for r in kept]), cov)
    baselines.update(fvd_from_stats(gaussian, static, eval_cfg.protocol, detector_sha256=sha,
                                    skipped_real=skipped, skipped_fake=skipped,
                                    label="static").metrics())  # fmt: skip
    if len(kept) >= 2 * MIN_CLIPS:
        floor = real_floor(np.stack([r["features"] for r in kept]), eval_cfg.protocol,
                           detector_sha256=sha, covariance=cov)  # fmt: skip
        baselines.update(floor.metrics())
    return Reference(gaussian=gaussian, skipped=skipped, baselines=baselines)


PER_VIDEO = (
    # (EvalConfig.metrics name, FeatureActor column, metric key)
    ("temporal_flickering", "temporal_flickering", "vbench/temporal_flickering"),
    ("motion_smoothness", "motion_smoothness", "proxy/motion_smoothness_farneback"),
    ("dynamic_degree", "dynamic", "proxy/dynamic_degree_farneback"),
    ("subject_consistency", "subject_consistency_i3d", "proxy/subject_consistency_i3d"),
)
"""Per-video metrics averaged over videos: ``vbench/`` = VBench's computation, ``proxy/``
= a stand-in for VBench's network (``eval.metrics``)."""


def reduce_metrics(
    eval_cfg: EvalConfig,
    real_rows: list[dict],
    fake_rows: list[dict],
    *,
    reference: Any = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """FVD of the model and its reference points (from ``reference``, the cached
    :class:`eval.fvd.Reference`, or from the real rows' features), every per-video metric
    for generated videos and as ``real/<key>`` for the real ones, the length law."""
    from flowception.eval.fvd import fvd_from_stats, gaussian_from_features
    from flowception.eval.length import length_distribution
    from flowception.eval.metrics import vbench_stride
    from flowception.eval.vbench import VideoConsistency, dimension_score

    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    wanted = set(eval_cfg.metrics)
    if "fvd" in wanted:
        reference = reference or real_reference(eval_cfg, real_rows)
        ff = [r["features"] for r in fake_rows if r["has_clip"]]
        if reference is None or len(ff) < 2:
            n_real = (
                reference.gaussian.count if reference else sum(r["has_clip"] for r in real_rows)
            )
            raise ValueError(
                f"FVD needs >= 2 clips of {eval_cfg.protocol.num_frames} frames on each side; "
                f"got {n_real} real and {len(ff)} generated"
            )
        fake = gaussian_from_features(np.stack(ff), eval_cfg.protocol.covariance)
        res = fvd_from_stats(
            reference.gaussian, fake, eval_cfg.protocol,
            detector_sha256=_detector_sha(eval_cfg), skipped_real=reference.skipped,
            skipped_fake=sum(not r["has_clip"] for r in fake_rows),
        )  # fmt: skip
        metrics.update(res.metrics())
        metrics.update(reference.baselines)
        params.update(res.params())
    for name, column, key in PER_VIDEO:
        if name not in wanted:
            continue
        for prefix, rows in (("", fake_rows), ("real/", real_rows)):
            values = np.asarray([r[column] for r in rows], dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                metrics[f"{prefix}{key}"] = float(values.mean())
    if "dynamic_degree" in wanted:
        params["proxy.dynamic_degree.stride"] = vbench_stride(eval_cfg.fps)
        params["eval.fps"] = eval_cfg.fps if eval_cfg.fps is not None else "unknown"
    for name in sorted(eval_cfg.vbench_weights):
        for prefix, rows in (("", fake_rows), ("real/", real_rows)):
            videos = [VideoConsistency(float(r[f"vbench_{name}_sum"]), int(r[f"vbench_{name}_pairs"]))
                      for r in rows if int(r[f"vbench_{name}_pairs"]) > 0]  # fmt: skip
            if videos:
                metrics[f"{prefix}vbench/{name}"] = dimension_score(videos)
    params["vbench.measured"] = (
        ",".join(k.removeprefix("vbench/") for k in sorted(metrics) if k.startswith("vbench/"))
        or "none"
    )
    if "length" in wanted:
        real_lengths = [int(r["length"]) for r in real_rows]
        stats = length_distribution([int(r["length"]) for r in fake_rows], real_lengths)
        metrics.update(stats.metrics())
        metrics["real/length/mean"] = stats.mean_data
        half = len(real_lengths) // 2
        if half:  # two disjoint halves of the data: the distance a perfect model would read
            floor = length_distribution(real_lengths[:half], real_lengths[half : 2 * half])
            metrics["real/length/wasserstein"] = floor.wasserstein
    return metrics, params


def side_by_side(metrics: dict[str, float]) -> list[tuple[str, float, str]]:
    """``(metric, generated value, data reference)`` rows: ``real/<key>`` for scores, the
    real floor and static baseline for FVD, the data's mean length for the mean length."""
    rows = []
    for key in sorted(metrics):
        if key.startswith("real/") or "/num_" in key or "/skipped_" in key:
            continue
        if key.startswith("fvd") and "/" not in key:
            refs = [f"{k}={metrics[k]:.4g}" for k in sorted(metrics)
                    if k.startswith("fvd") and k.endswith(("/real_floor", "/static"))]  # fmt: skip
            rows.append((key, metrics[key], ", ".join(refs) or "-"))
        elif key.startswith("fvd") or key == "length/mean_data":
            continue
        elif key == "length/mean_generated":
            rows.append((key, metrics[key], f"real/length/mean={metrics['real/length/mean']:.4g}"))
        else:
            real = metrics.get(f"real/{key}")
            rows.append((key, metrics[key], f"real/{key}={real:.4g}" if real is not None else "-"))
    return rows


def _vbench_params(eval_cfg: EvalConfig) -> dict[str, str]:
    """Model, path and sha256 of every VBench weight file (read before any work)."""
    import hashlib

    from flowception.eval.vbench import DIMENSIONS, weight_files

    out = {}
    for name, path in sorted(eval_cfg.vbench_weights.items()):
        out.update({f"vbench.{name}.model": DIMENSIONS[name], f"vbench.{name}.weights": path})
        for i, file in enumerate(weight_files(name, path)):
            if not file.is_file():
                raise FileNotFoundError(f"eval.vbench_weights.{name}={path}: no such file "
                                        f"{file} (weights are never downloaded)")  # fmt: skip
            digest = hashlib.sha256()
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[f"vbench.{name}.{'sha256' if i == 0 else 'head_sha256'}"] = digest.hexdigest()
    return out


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
    table = ["| metric | generated | data reference |", "|---|---|---|"]
    table += [f"| {k} | {v:.4g} | {ref} |" for k, v, ref in side_by_side(metrics)]
    (out_dir / "summary.md").write_text("\n".join(table) + "\n")
    files.append(out_dir / "summary.md")
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
    cfg: EvalJobConfig,
    step: int | None,
    metrics: dict,
    params: dict,
    files: list[Path],
    *,
    task: str = "auto",
    qualifier: str | None = None,
) -> str | None:
    """A child run under the training run, and the headline metrics in the training run
    (``eval/<key>``; ``eval/<qualifier>/<key>`` for a task other than the training one, so
    the two evaluations of one step do not overwrite each other)."""
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
            "flowception.eval_step": str(step if step is not None else -1), "flowception.eval_status": "running",
            "flowception.eval_task": task}  # fmt: skip
    if parent:
        tags["mlflow.parentRunId"] = parent
    name = f"eval-step_{step:07d}" if step is not None else "eval"
    name += f"-{qualifier}" if qualifier else ""
    prefix = f"eval/{qualifier}/" if qualifier else "eval/"
    child = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    from flowception.cluster.tracking import safe_params
    from flowception.config import flatten

    flat = {**params, **flatten(cfg.to_dict(), "job.")}
    for key, value in safe_params(flat).items():
        client.log_param(child, key, value)
    for key, value in metrics.items():
        client.log_metric(child, key, value, step=step or 0)
        if parent:
            client.log_metric(parent, f"{prefix}{key}", value, step=step or 0)
    for path in files:
        sub = "videos" if path.parent.name == "videos" else None
        client.log_artifact(child, str(path), sub)
    if parent:
        from flowception.cluster.registry import link_eval_run

        link_eval_run(client, parent, child, step, qualifier)
    client.set_tag(child, "flowception.eval_status", "done")
    client.set_terminated(child)
    return child
