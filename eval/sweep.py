"""Evaluate every checkpoint of a run that has no result yet (idempotent, resumable).

    flowception sweep runs/flowception-1a2b3c4d5e6f            # local run directory
    flowception sweep s3://bucket/runs/x num_videos=256        # eval overrides pass through
    flowception sweep runs/x --dry-run                          # list what would be evaluated

A checkpoint counts as evaluated when the training run has an eval child run for its
step tagged ``flowception.eval_status = done`` and ``flowception.eval_key`` = this sweep's
``done_key`` (the FVD protocol hash, the clip counts and the detector's sha256), so a
toy sweep (64 clips) never blocks the real one (2048 clips); without MLflow, when
``{output_dir}/step_XXXXXXX/done-KEY`` exists. A run directory without ``run.json`` or
without a complete checkpoint is an error naming it (a scheduled sweep of a wrong path
fails instead of staying green). A sweep that crashed left a child
run in ``running``; the next sweep marks it failed and evaluates that step again, so a
second call after a complete sweep does nothing. Run it on a schedule (README: cron /
Kubernetes CronJob submitting ``flowception sweep`` as a Ray job). The real clips' I3D
statistics are computed once and cached under ``{output_dir}/reference`` unless
``eval.reference_cache`` says where.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from flowception.eval.job import EvalJobConfig, EvalResult, load_job_config, run_eval, run_info

log = logging.getLogger("flowception.sweep")


KEY_TAG = "flowception.eval_key"


def done_key(cfg: EvalJobConfig) -> str:
    """16 hex digits over what makes two evaluations comparable: FVD protocol hash, clip
    counts (generated, real), the detector's sha256 and a task other than the training
    one (``auto`` adds nothing, so earlier keys still match)."""
    from flowception.eval.assets import read_bytes, recorded_sha256, sha256_bytes

    detector = cfg.eval.detector
    sha = cfg.eval.detector_sha256 or recorded_sha256(detector)
    key = {
        "protocol": cfg.eval.protocol.hash(),
        "num_videos": cfg.num_videos,
        "num_real": cfg.num_real or cfg.num_videos,
        "detector": sha or sha256_bytes(read_bytes(detector)),
    }
    if cfg.task != "auto":
        key["task"] = cfg.task
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def check_run(run_uri: str, endpoint_url: str | None) -> dict:
    """``run.json`` of ``run_uri``; ``FileNotFoundError`` naming the path when it is not a run."""
    from flowception.cluster import storage

    fs, path = storage.resolve(run_uri, endpoint_url)
    try:
        return json.loads(storage.read_text(fs, f"{path}/run.json"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"sweep {run_uri}: no run.json, not a training run directory "
            "(give {cluster.storage_path}/{run name})"
        ) from None


def evaluated_steps(run_uri: str, cfg: EvalJobConfig, key: str) -> set[int]:
    """Steps with a finished evaluation under ``key``; stale ``running`` child runs are marked failed."""
    info = run_info(run_uri, cfg.endpoint_url)
    uri = cfg.tracking_uri or info.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    parent = cfg.run_id or info.get("mlflow_run_id")
    if uri and parent:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_run(parent).info.experiment_id
        runs = client.search_runs(
            [exp],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`flowception.kind` = 'eval'",
        )
        done = set()
        for run in runs:
            step = int(run.data.tags.get("flowception.eval_step", -1))
            tags = run.data.tags
            if tags.get("flowception.eval_status") == "done" and tags.get(KEY_TAG) == key:
                done.add(step)
            elif run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "flowception.eval_status", "crashed")
                client.set_terminated(run.info.run_id, status="FAILED")
        return done
    out = Path(cfg.output_dir)
    return {int(p.parent.name.split("_")[1]) for p in out.glob(f"step_*/done-{key}")}


def pending(run_uri: str, cfg: EvalJobConfig, key: str) -> list[tuple[int, str]]:
    """``(step, checkpoint uri)`` of complete checkpoints without a finished evaluation.

    Raises:
        FileNotFoundError: ``run_uri`` has no ``run.json`` or no complete checkpoint.
    """
    from flowception.cluster.checkpoint import list_checkpoints

    check_run(run_uri, cfg.endpoint_url)
    found = list_checkpoints(run_uri, cfg.endpoint_url)
    if not found:
        raise FileNotFoundError(f"sweep {run_uri}: no complete checkpoint (step_*/manifest.json)")
    done = evaluated_steps(run_uri, cfg, key)
    return [(s, uri) for s, uri in found if s not in done]


def mark_done(cfg: EvalJobConfig, result: EvalResult, key: str) -> None:
    """Record ``key`` on the eval's child run (and next to its summary)."""
    if result.mlflow_run_id:
        from mlflow.tracking import MlflowClient

        info = run_info(cfg.checkpoint, cfg.endpoint_url)
        uri = cfg.tracking_uri or info.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        MlflowClient(uri).set_tag(result.mlflow_run_id, KEY_TAG, key)
    (Path(result.output_dir) / f"done-{key}").write_text(key)


def run_sweep(run_uri: str, overrides: list[str], *, dry_run: bool = False) -> list[EvalResult]:
    """Evaluate the pending checkpoints of ``run_uri`` in step order."""
    base = load_job_config(run_uri, overrides)
    if base.eval.reference_cache is None:  # every step compares with the same real clips
        base = base.replace(eval=base.eval.replace(reference_cache=f"{base.output_dir}/reference"))
    key = done_key(base)
    todo = pending(run_uri, base, key)
    log.info("%s: %d checkpoint(s) to evaluate: %s", run_uri, len(todo), [s for s, _ in todo])
    if not todo:
        print(f"[sweep] {run_uri}: nothing pending (eval key {key})", flush=True)
        return []
    if dry_run:
        for step, uri in todo:
            print(f"[sweep] pending step {step}: {uri}")
        return []
    results = []
    for step, uri in todo:
        print(f"[sweep] evaluating step {step} ({uri})", flush=True)
        cfg = base.replace(checkpoint=uri)
        results.append(run_eval(cfg))
        mark_done(cfg, results[-1], key)
    return results
