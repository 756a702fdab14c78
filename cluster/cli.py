"""``flowception`` subcommands for training: train, submit, status, logs, stop, export, mlflow-server.

    flowception mlflow-server &                                   # prints MLFLOW_TRACKING_URI
    export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
    flowception train configs/demo-cpu.yaml                       # local Ray, 2 CPU workers
    flowception train configs/demo-cpu.yaml steps=50 optim.lr=3e-4 cluster.name=try1
    flowception train configs/demo-cpu.yaml checkpoint.resume_from=runs/try1
    flowception export runs/try1 export/try1                      # model.safetensors + config.yaml
    flowception submit configs/demo-cpu.yaml steps=50 --address http://127.0.0.1:8265 --follow \
        data.shards=s3://my-bucket/mm/train cluster.storage_path=s3://my-bucket/runs
    flowception status JOB_ID --address http://127.0.0.1:8265
    flowception logs JOB_ID --address http://127.0.0.1:8265 --follow
    flowception stop JOB_ID --address http://127.0.0.1:8265
    flowception tracking flush runs/try1                          # MLflow records left on disk

Overrides are ``section.key=value`` (YAML values) and go right after CONFIG, before
any ``--option``; unknown keys are an error naming the key, and the whole config is
validated before Ray is started or contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the ``flowception`` parser."""
    train = subparsers.add_parser(
        "train", help="train on Ray Train + DeepSpeed (local or RAY_ADDRESS)"
    )
    train.add_argument("config", help="YAML recipe, e.g. configs/demo-cpu.yaml")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.add_argument("--print-config", action="store_true", help="print the config and exit")
    train.set_defaults(func=_train)

    from flowception.cluster.submit import add_job_options

    submit = subparsers.add_parser(
        "submit", help="submit training as a Ray job (uploads the current directory)"
    )
    submit.add_argument("config", help="YAML recipe, read here and sent inline with the job")
    submit.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_job_options(submit, address_required=True)
    submit.set_defaults(func=_submit)

    for name, helptext, fn in (
        ("status", "a Ray job's status", _status),
        ("stop", "stop a Ray job", _stop),
        ("logs", "a Ray job's logs", _logs),
    ):
        p = subparsers.add_parser(name, help=helptext)
        p.add_argument("job_id", help="the id `flowception submit` printed (raysubmit_...)")
        _address(p)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        p.set_defaults(func=fn)

    export = subparsers.add_parser("export", help="consolidated fp32 weights of a checkpoint")
    export.add_argument("checkpoint", help="checkpoint or run directory (local or s3://)")
    export.add_argument("out", help="local output directory")
    export.set_defaults(func=_export)

    server = subparsers.add_parser("mlflow-server", help="run a local MLflow server until Ctrl-C")
    server.add_argument("--root", default="mlruns", help="holds mlflow.db and artifacts/")
    server.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (loopback by default)"
    )
    server.add_argument("--port", type=int, default=None, help="default: a free port")
    server.set_defaults(func=_mlflow_server)

    tracking = subparsers.add_parser(
        "tracking", help="MLflow records a run could not send (server away) and their replay"
    )
    tracking_sub = tracking.add_subparsers(dest="tracking_command", required=True)
    flush = tracking_sub.add_parser(
        "flush", help="send a run's spooled metrics, artifacts and end status to MLflow"
    )
    flush.add_argument("run_dir", help="the run directory (local or s3://), holding tracking/")
    flush.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow server (default: MLFLOW_TRACKING_URI, else the run's run.json)",
    )
    flush.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint of an s3:// RUN_DIR (default: AWS)"
    )
    flush.set_defaults(func=_tracking_flush)


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)",
    )


def _train(args: argparse.Namespace) -> int:
    from flowception.cluster.config import load_config

    cfg = load_config(args.config, args.overrides)  # validated before Ray is touched
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from flowception.cluster.launch import launch

    result = launch(cfg)
    summary = {
        "run": result.run_uri,
        "checkpoint": result.checkpoint,
        "export": result.export,
        "mlflow_run_id": result.mlflow_run_id,
        "step": result.metrics.get("step"),
        "loss": result.metrics.get("loss"),
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary, indent=1))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from flowception.cluster import submit

    job_id = submit.submit(args.config, args.overrides, address=args.address, options=args)
    print(job_id, flush=True)
    if args.follow:
        state = submit.follow(job_id, address=args.address)
        print(f"job {job_id}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from flowception.cluster import submit

    print(submit.status(args.job_id, address=args.address))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from flowception.cluster import submit

    stopped = submit.stop(args.job_id, address=args.address)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from flowception.cluster import submit

    if args.follow:
        state = submit.follow(args.job_id, address=args.address)
        return 0 if state == "SUCCEEDED" else 1
    print(submit.logs(args.job_id, address=args.address), end="")
    return 0


def _tracking_flush(args: argparse.Namespace) -> int:
    from flowception.cluster.tracking import flush_run
    from flowception.redact import redact_text

    try:
        left = flush_run(args.run_dir, args.tracking_uri, args.endpoint_url)
    except (FileNotFoundError, ValueError) as exc:
        print(f"flowception tracking flush: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the server is still away: one line, not a trace
        print(f"flowception tracking flush: {args.run_dir}: MLflow unreachable "
              f"({redact_text(str(exc))[:300]}); what arrived is recorded, run it again later",
              file=sys.stderr)  # fmt: skip
        return 1
    if any(left.values()):
        print(f"{args.run_dir}: still on disk: {left}", file=sys.stderr)
        return 1
    print(f"{args.run_dir}: everything sent")
    return 0


def _export(args: argparse.Namespace) -> int:
    from flowception.cluster.checkpoint import export_weights

    out = export_weights(args.checkpoint, Path(args.out))
    print(out)
    return 0


def _mlflow_server(args: argparse.Namespace) -> int:
    import signal

    from flowception.cluster.mlflow_server import mlflow_server

    # `kill PID` (SIGTERM) must stop the server too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with mlflow_server(Path(args.root), host=args.host, port=args.port) as uri:
        print(f"export MLFLOW_TRACKING_URI={uri}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0
