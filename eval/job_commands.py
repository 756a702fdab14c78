"""``flowception eval | sweep | compare`` (collected by ``flowception.eval.cli``).

Runbook::

    flowception eval runs/demo/step_0000200 eval.detector=assets/i3d_kinetics400.safetensors
    flowception eval runs/demo/export num_videos=256 actors=2 sampler.num_steps=50 task=image_to_video
    flowception sweep runs/demo                         # every checkpoint without a result
    flowception sweep runs/demo --dry-run
    flowception compare RUN_A RUN_B --out outputs/compare
    flowception eval s3://BUCKET/runs/x/step_0100000 --address http://HEAD:8265 --follow   # as a Ray job
    flowception sweep s3://BUCKET/runs/x --address http://HEAD:8265                        # as a Ray job

Overrides are dotted keys of ``eval.job.EvalJobConfig`` (``eval.protocol.num_real=512``,
``sampler.cfg_scale=2``); unknown keys are an error naming them.
"""

from __future__ import annotations

import argparse
import json


def _submitted(args: argparse.Namespace, command: list[str]) -> int:
    """Submit the validated command as a Ray job (``--address``) and optionally follow it."""
    from flowception.cluster.submit import follow, submit_command

    job = submit_command(command, address=args.address, pip=not args.no_pip)
    print(f"submitted {job}")
    if args.follow:
        return 0 if follow(job, address=args.address) == "SUCCEEDED" else 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    from flowception.eval.job import load_job_config, run_eval

    cfg = load_job_config(args.checkpoint, args.overrides)  # validated before Ray starts
    if args.address:
        return _submitted(args, ["eval", args.checkpoint, *args.overrides])
    result = run_eval(cfg)
    print(json.dumps({"step": result.step, "metrics": result.metrics, "mlflow_run_id": result.mlflow_run_id,
                      "output_dir": str(result.output_dir)}, indent=1))  # fmt: skip
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from flowception.eval.job import load_job_config
    from flowception.eval.sweep import run_sweep

    load_job_config(args.run, args.overrides)  # validated before anything runs
    if args.address:
        return _submitted(args, ["sweep", args.run, *args.overrides])

    results = run_sweep(args.run, args.overrides, dry_run=args.dry_run)
    for r in results:
        print(f"step {r.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items())))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from flowception.eval.compare import compare_runs

    table, png = compare_runs(
        args.runs, tracking_uri=args.tracking_uri, metrics=args.metrics, out_dir=args.out
    )
    print(table)
    print(f"plot: {png}")
    return 0


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default=None, help="submit as a Ray job to this head (http://HEAD:8265)"
    )
    p.add_argument("--follow", action="store_true", help="with --address: print the job's logs")
    p.add_argument("--no-pip", action="store_true", help="with --address: the image has the deps")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval``, ``sweep`` and ``compare``."""
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (FVD, VBench-style, length law) as a Ray job"
    )
    p.add_argument(
        "checkpoint", help="step_XXXXXXX checkpoint, export dir or run dir (local or s3://)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. num_videos=128")
    _job_options(p)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "sweep", help="evaluate every checkpoint of a run that has no result yet"
    )
    p.add_argument("run", help="run directory (local or s3://)")
    p.add_argument("overrides", nargs="*", help="dotted eval overrides")
    p.add_argument("--dry-run", action="store_true", help="only list the pending checkpoints")
    _job_options(p)
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser("compare", help="table + PNG of metrics of MLflow runs")
    p.add_argument("runs", nargs="+", help="MLflow run ids or run names")
    p.add_argument(
        "--metrics", nargs="*", default=None, help="metric keys (default: those all runs share)"
    )
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    p.add_argument("--out", default="outputs/compare", help="folder for compare.md and metrics.png")
    p.set_defaults(func=_compare)
