"""Evaluate every checkpoint of a run that has no result yet (idempotent, resumable).

    flowception sweep runs/flowception-1a2b3c4d5e6f            # local run directory
    flowception sweep s3://bucket/runs/x num_videos=256        # eval overrides pass through
    flowception sweep runs/x --dry-run                          # list what would be evaluated

A checkpoint counts as evaluated when the training run has an eval child run for its
step tagged ``flowception.eval_status = done`` (without MLflow: when
``{output_dir}/step_XXXXXXX/summary.json`` exists). A sweep that crashed left a child
run in ``running``; the next sweep marks it failed and evaluates that step again, so a
second call after a complete sweep does nothing. Run it on a schedule (README: cron /
Kubernetes CronJob submitting ``flowception sweep`` as a Ray job). The real clips' I3D
statistics are computed once and cached under ``{output_dir}/reference`` unless
``eval.reference_cache`` says where.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from flowception.eval.job import EvalJobConfig, EvalResult, load_job_config, run_eval, run_info

log = logging.getLogger("flowception.sweep")


def evaluated_steps(run_uri: str, cfg: EvalJobConfig) -> set[int]:
    """Steps with a finished evaluation; stale ``running`` child runs are marked failed."""
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
            if run.data.tags.get("flowception.eval_status") == "done":
                done.add(step)
            elif run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "flowception.eval_status", "crashed")
                client.set_terminated(run.info.run_id, status="FAILED")
        return done
    out = Path(cfg.output_dir)
    return {int(p.parent.name.split("_")[1]) for p in out.glob("step_*/summary.json")}


def pending(run_uri: str, cfg: EvalJobConfig) -> list[tuple[int, str]]:
    """``(step, checkpoint uri)`` of complete checkpoints without a finished evaluation."""
    from flowception.cluster.checkpoint import list_checkpoints

    done = evaluated_steps(run_uri, cfg)
    return [(s, uri) for s, uri in list_checkpoints(run_uri, cfg.endpoint_url) if s not in done]


def run_sweep(run_uri: str, overrides: list[str], *, dry_run: bool = False) -> list[EvalResult]:
    """Evaluate the pending checkpoints of ``run_uri`` in step order."""
    base = load_job_config(run_uri, overrides)
    if base.eval.reference_cache is None:  # every step compares with the same real clips
        base = replace(
            base, eval=replace(base.eval, reference_cache=f"{base.output_dir}/reference")
        )
    todo = pending(run_uri, base)
    log.info("%s: %d checkpoint(s) to evaluate: %s", run_uri, len(todo), [s for s, _ in todo])
    if dry_run:
        for step, uri in todo:
            print(f"would evaluate step {step}: {uri}")
        return []
    results = []
    for step, uri in todo:
        print(f"[sweep] evaluating step {step} ({uri})", flush=True)
        results.append(run_eval(replace(base, checkpoint=uri)))
    if not todo:
        print(f"[sweep] {run_uri}: every checkpoint already has a result")
    return results
