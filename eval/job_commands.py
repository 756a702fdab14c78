"""``flowception eval | sweep | compare`` (collected by ``flowception.eval.cli``).

Runbook::

    flowception eval runs/demo/step_0000200 eval.detector=assets/i3d_kinetics400.safetensors
    flowception eval runs/demo/export num_videos=256 actors=2 sampler.num_steps=50 task=image_to_video
    flowception sweep runs/demo                         # every checkpoint without a result
    flowception sweep runs/demo --dry-run
    flowception compare RUN_A RUN_B --out outputs/compare
    flowception eval s3://my-bucket/runs/x/step_0100000 --address http://HEAD:8265 --follow \
        eval.detector=s3://my-bucket/assets/i3d_kinetics400.safetensors     # as a Ray job
    flowception sweep s3://my-bucket/runs/x --address http://HEAD:8265 --dry-run \
        eval.detector=s3://my-bucket/assets/i3d_kinetics400.safetensors

With ``--address`` every path (checkpoint, shards, detector, reference cache, output dir)
must be an ``s3://`` URI, or local with ``--shared-fs``; see ``flowception.cluster.submit``.

Overrides are dotted keys of ``eval.job.EvalJobConfig`` (``eval.protocol.num_real=512``,
``sampler.cfg_scale=2``); unknown keys are an error naming them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

REMOTE_OUTPUT = "/tmp/flowception-eval"
"""``output_dir`` of a submitted eval when none is given: scratch on the job's node (results
reach MLflow); give ``output_dir=`` with ``--shared-fs`` to keep the files."""


def _submitted(args: argparse.Namespace, command: str, target: str, cfg: Any) -> int:
    """Check every path of ``cfg`` for the cluster, then submit ``flowception COMMAND`` as a
    Ray job and optionally stream its logs.

    Raises:
        ValueError / FileNotFoundError: a path the cluster cannot read, a placeholder, or a
            missing detector (nothing is submitted).
    """
    from flowception.cluster.submit import (
        EVAL_PATHS,
        cluster_path,
        follow,
        require_exists,
        resolve_paths,
        submit_job,
    )  # fmt: skip

    given = {o.partition("=")[0] for o in args.overrides}
    tree = cfg.to_dict()
    if "output_dir" not in given and not args.shared_fs:
        tree["output_dir"] = REMOTE_OUTPUT  # scratch on the node; results go to MLflow
    tree = resolve_paths(tree, tuple(k for k in EVAL_PATHS if k != "output_dir"),
                         shared_fs=args.shared_fs)  # fmt: skip
    if tree["output_dir"] != REMOTE_OUTPUT:
        tree["output_dir"] = cluster_path(
            "output_dir", tree["output_dir"], shared_fs=args.shared_fs
        )
    ev = tree["eval"]
    if command == "sweep" and ev.get("reference_cache") is None and "://" in tree["checkpoint"]:
        ev["reference_cache"] = f"{tree['checkpoint'].rstrip('/')}/eval-reference"
    require_exists("eval.detector", ev["detector"], tree.get("endpoint_url"))
    fixed = [f"output_dir={tree['output_dir']}"]
    fixed += [f"{k}={_get(tree, k)}" for k in EVAL_PATHS[1:] if _get(tree, k) is not None]
    argv = [command, tree["checkpoint"], *args.overrides, *fixed]
    if getattr(args, "dry_run", False):
        argv.append("--dry-run")
    job = submit_job(
        ["python", "-m", "flowception.eval.cli", *argv],
        address=args.address,
        options=args,
        metadata={"FLOWCEPTION_SOURCE": f"flowception {command}", "target": target},
    )
    print(f"submitted {job}", flush=True)
    if args.follow:
        return 0 if follow(job, address=args.address) == "SUCCEEDED" else 1
    return 0


def _check_values(cfg: Any) -> None:
    """Placeholders (``YOUR_BUCKET``) left in a command or manifest: an error, not a run."""
    from flowception.cluster.submit import check_value

    for key, value in cfg.flat().items():
        check_value(key, value)


def _get(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _eval(args: argparse.Namespace) -> int:
    from flowception.eval.job import load_job_config, run_eval

    cfg = load_job_config(args.checkpoint, args.overrides)  # validated before Ray starts
    _check_values(cfg)
    if args.address:
        return _submitted(args, "eval", args.checkpoint, cfg)
    result = run_eval(cfg)
    from flowception.eval.sweep import done_key, mark_done

    mark_done(cfg, result, done_key(cfg))  # a sweep with this protocol skips this step
    print(json.dumps({"step": result.step, "metrics": result.metrics, "mlflow_run_id": result.mlflow_run_id,
                      "output_dir": str(result.output_dir)}, indent=1))  # fmt: skip
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from flowception.eval.job import load_job_config
    from flowception.eval.sweep import run_sweep

    cfg = load_job_config(args.run, args.overrides)  # validated before anything runs
    _check_values(cfg)
    if args.address:
        return _submitted(args, "sweep", args.run, cfg)

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval``, ``sweep`` and ``compare``."""
    from flowception.cluster.submit import add_job_options

    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (FVD, VBench-style, length law) as a Ray job"
    )
    p.add_argument(
        "checkpoint", help="step_XXXXXXX checkpoint, export dir or run dir (local or s3://)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. num_videos=128")
    add_job_options(p)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "sweep", help="evaluate every checkpoint of a run that has no result yet"
    )
    p.add_argument("run", help="run directory (local or s3://)")
    p.add_argument("overrides", nargs="*", help="dotted eval overrides")
    p.add_argument("--dry-run", action="store_true", help="only list the pending checkpoints")
    add_job_options(p)
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser("compare", help="table + PNG of metrics of MLflow runs")
    p.add_argument("runs", nargs="+", help="MLflow run ids or run names")
    p.add_argument(
        "--metrics", nargs="*", default=None, help="metric keys (default: those all runs share)"
    )
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    p.add_argument("--out", default="outputs/compare", help="folder for compare.md and metrics.png")
    p.set_defaults(func=_compare)
