"""``flowception experiment NAME [--quick] [key=value ...]``: the paper's experiments.

    flowception experiment schedule                 # training sampler vs spec (no training)
    flowception experiment baselines --quick        # Flowception / full sequence / AR (+causal)
    flowception experiment insertion-order          # learned rates vs E25 orders
    flowception experiment local-attention --quick  # window W in {1, 2, 4, full}
    flowception experiment cost                     # sampling FLOPs and time at 8/16/32 frames
    flowception experiment baselines steps=100 arms=[flowception,full_sequence] out=/tmp/exp
    MLFLOW_TRACKING_URI=http://mlflow:5000 RAY_ADDRESS=auto flowception experiment baselines

Recipes: ``configs/experiments/NAME.yaml`` (``quick:`` block for ``--quick``); keys are
the fields of ``eval.experiments.config.ExperimentConfig``. Results: ``{out}/NAME/``
(results.md, results.csv, plot.png, summary.json) and a parent MLflow run with one
child run per arm. Without ``MLFLOW_TRACKING_URI`` a local server runs for the duration.
"""

from __future__ import annotations

import argparse

from flowception.eval.experiments import EXPERIMENTS


def _experiment(args: argparse.Namespace) -> int:
    from flowception.eval.experiments.config import load_experiment
    from flowception.eval.experiments.runner import run_experiment

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    run_experiment(load_experiment(args.name, quick=args.quick, overrides=overrides))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run one of the paper's experiments (parent MLflow run, table, plot)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    p.add_argument("--quick", action="store_true", help="the recipe's quick sizes (< 3 min)")
    p.add_argument("--out", default=None, help="root folder (default outputs/experiments)")
    p.add_argument("overrides", nargs="*", help="key=value fields of ExperimentConfig")
    p.set_defaults(func=_experiment)
