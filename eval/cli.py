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


def user_error(exc: BaseException) -> str | None:
    """One line saying what went wrong and what to do, for errors a user can fix; else None.

    Config and input errors (``ValueError``, missing files) carry their own message;
    storage errors are recognised by their class names (botocore is not imported here).
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE), or data.s3_anon=true for a public bucket")  # fmt: skip
    if "EndpointConnectionError" in names:
        return f"{exc}: check the S3 endpoint (data.s3_endpoint_url / AWS_ENDPOINT_URL)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc}"
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


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
    except Exception as exc:  # noqa: BLE001 - known user errors become one line, others raise
        message = user_error(exc)
        if message is None:
            raise
        from flowception.redact import redact_text

        print(f"flowception {args.command}: error: {redact_text(message)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
