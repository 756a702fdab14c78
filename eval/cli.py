"""The ``flowception`` command.

Each package contributes its own subcommands through a ``register(subparsers)``
function in its ``cli`` module; this module (at the top of the import chain, since
``eval`` may use every other package) only collects them. Run
``flowception --help`` for the list and ``flowception CMD --help`` for each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that define ``register(subparsers)``; missing ones are simply not offered.
COMMAND_MODULES = (
    "flowception.pipelines.cli",
    "flowception.cluster.cli",
    "flowception.eval.commands",
    "flowception.eval.job_commands",
    "flowception.eval.demo",
    "flowception.eval.experiments.cli",
    "flowception.eval.config_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowception",
        description="Flowception video generation on Ray: data, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    from flowception.eval.config_commands import decorate

    decorate(sub.choices)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:
        if command in action.choices:
            return action.choices[command]
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowception")
    except PackageNotFoundError:
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    from flowception.config import is_override
    from flowception.eval.config_commands import CONFIG_COMMANDS, print_config

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra:
        # ``key=value`` overrides may stand anywhere, also after an ``--option``.
        if hasattr(args, "overrides") and all(is_override(t) for t in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "print_config", False) and args.command in CONFIG_COMMANDS:
            print_config(args.command, args)
            return 0
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Config and input errors: one clear line, no traceback.
        print(f"flowception {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
