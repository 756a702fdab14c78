"""``flowception eval | sweep | compare`` (collected by ``eval.cli``).

Runbook::

    flowception eval runs/demo/step_0000200 eval.detector=assets/i3d_kinetics400.safetensors
    flowception eval runs/demo/export num_videos=256 actors=2 sampler.num_steps=50 task=image_to_video
    flowception sweep runs/demo                         # every checkpoint without a result
    flowception sweep runs/demo --dry-run
    flowception compare RUN_A RUN_B --out outputs/compare

Overrides are dotted keys of ``eval.job.EvalJobConfig`` (``eval.protocol.num_real=512``,
``sampler.cfg_scale=2``); unknown keys are an error naming them.
"""

from __future__ import annotations

import argparse
import json


def _eval(args: argparse.Namespace) -> int:
    from eval.job import load_job_config, run_eval

    cfg = load_job_config(args.checkpoint, args.overrides)  # validated before Ray starts
    result = run_eval(cfg)
    print(json.dumps({"step": result.step, "metrics": result.metrics, "mlflow_run_id": result.mlflow_run_id,
                      "output_dir": str(result.output_dir)}, indent=1))  # fmt: skip
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from eval.sweep import run_sweep

    results = run_sweep(args.run, args.overrides, dry_run=args.dry_run)
    for r in results:
        print(f"step {r.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from eval.compare import compare_runs

    table, png = compare_runs(
        args.runs, tracking_uri=args.tracking_uri, metrics=args.metrics, out_dir=args.out
    )
    print(table)
    print(f"plot: {png}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval``, ``sweep`` and ``compare``."""
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (FVD, VBench-style, length law) as a Ray job"
    )
    p.add_argument(
        "checkpoint", help="step_XXXXXXX checkpoint, export dir or run dir (local or s3://)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. num_videos=128")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "sweep", help="evaluate every checkpoint of a run that has no result yet"
    )
    p.add_argument("run", help="run directory (local or s3://)")
    p.add_argument("overrides", nargs="*", help="dotted eval overrides")
    p.add_argument("--dry-run", action="store_true", help="only list the pending checkpoints")
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser("compare", help="table + PNG of metrics of MLflow runs")
    p.add_argument("runs", nargs="+", help="MLflow run ids or run names")
    p.add_argument(
        "--metrics", nargs="*", default=None, help="metric keys (default: those all runs share)"
    )
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    p.add_argument("--out", default="outputs/compare", help="folder for compare.md and metrics.png")
    p.set_defaults(func=_compare)
