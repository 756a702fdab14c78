"""The config trees behind the commands: ``--help`` text, ``--print-config``, JSON Schemas.

    flowception config schema train > configs/schema/train.schema.json
    flowception config schema --all              # rewrite configs/schema/*.schema.json
    flowception config cli-table --write         # regenerate README.md's CLI table
    flowception train configs/demo-cpu.yaml steps=5 --print-config
    flowception sweep runs/demo --dry-run num_videos=8   # overrides anywhere on the line

Every command that takes ``key=value`` overrides is listed in :data:`CONFIG_COMMANDS` with
the :class:`flowception.config.Config` it builds; ``flowception.eval.cli`` uses the table
to add each field's default and description to ``--help`` and a ``--print-config`` flag.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowception.config import Config, help_epilog, json_schema

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "configs" / "schema"


def _train_cls() -> type[Config]:
    from flowception.cluster.config import TrainConfig

    return TrainConfig


def _eval_cls() -> type[Config]:
    from flowception.eval.job import EvalJobConfig

    return EvalJobConfig


def _experiment_cls() -> type[Config]:
    from flowception.eval.experiments.config import ExperimentConfig

    return ExperimentConfig


def _load_train(args: argparse.Namespace) -> Config:
    from flowception.cluster.config import load_config

    return load_config(args.config, args.overrides)


def _load_eval(args: argparse.Namespace) -> Config:
    from flowception.eval.job import load_job_config

    return load_job_config(getattr(args, "checkpoint", None) or args.run, args.overrides)


def _load_experiment(args: argparse.Namespace) -> Config:
    from flowception.eval.experiments.config import load_experiment

    overrides = [*args.overrides, *([f"out={args.out}"] if args.out else [])]
    return load_experiment(args.name, quick=args.quick, overrides=overrides)


CONFIG_COMMANDS: dict[str, tuple[Callable[[], type[Config]], Callable[..., Config]]] = {
    "train": (_train_cls, _load_train),
    "submit": (_train_cls, _load_train),
    "eval": (_eval_cls, _load_eval),
    "sweep": (_eval_cls, _load_eval),
    "experiment": (_experiment_cls, _load_experiment),
}
"""Command -> (its config class, the loader that builds its config from parsed args)."""


def experiment_recipe_schema() -> dict[str, Any]:
    """Schema of ``configs/experiments/NAME.yaml``: the fields of ``ExperimentConfig`` (the
    name comes from the file name) and a ``quick:`` block of the same fields."""
    schema = json_schema(_experiment_cls())
    props = {k: v for k, v in schema["properties"].items() if k not in ("name", "quick")}
    block = {"type": "object", "properties": props, "additionalProperties": False}
    schema["properties"] = {**props, "quick": {**block, "description": "Fields under --quick."}}
    schema.pop("required", None)
    return schema


SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "train": lambda: json_schema(_train_cls()),
    "experiment": experiment_recipe_schema,
    "eval": lambda: json_schema(_eval_cls()),
}
"""Recipe kind -> its JSON Schema (``configs/*.yaml``, ``configs/experiments/*.yaml``, eval)."""


def schema_text(kind: str) -> str:
    """The JSON Schema of one recipe kind, as committed under ``configs/schema/``."""
    return json.dumps(SCHEMAS[kind](), indent=2, sort_keys=True) + "\n"


def _schema(args: argparse.Namespace) -> int:
    kinds = list(SCHEMAS) if args.all else [args.kind]
    if None in kinds:
        raise ValueError(f"config schema: name a kind ({', '.join(SCHEMAS)}) or give --all")
    if not args.all:
        print(schema_text(args.kind), end="")
        return 0
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        path = SCHEMA_DIR / f"{kind}.schema.json"
        path.write_text(schema_text(kind))
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="JSON Schemas of the recipe kinds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = sub.add_parser("schema", help="print (or with --all write) a recipe kind's JSON Schema")
    s.add_argument("kind", nargs="?", choices=list(SCHEMAS), help="recipe kind")
    s.add_argument(
        "--all", action="store_true", help="write every kind into configs/schema/ of the checkout"
    )
    s.set_defaults(func=_schema)
    t = sub.add_parser("cli-table", help="print (or with --write update README.md) the CLI table")
    t.add_argument("--write", action="store_true", help="replace the table in README.md")
    t.set_defaults(func=_cli_table)


def _cli_table(args: argparse.Namespace) -> int:
    from flowception.eval.cli import README_BEGIN, README_END, cli_reference

    table = cli_reference()
    if not args.write:
        print(table)
        return 0
    readme = SCHEMA_DIR.parents[1] / "README.md"
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme}: no CLI table markers ({README_BEGIN!r} ... {README_END!r})")
    head, rest = text.split(README_BEGIN, 1)
    readme.write_text(head + table + rest.split(README_END, 1)[1])
    print(readme)
    return 0


def decorate(parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Give each config-taking command its fields in ``--help`` and a ``--print-config``."""
    for name, (cls, _) in CONFIG_COMMANDS.items():
        p = parsers.get(name)
        if p is None:
            continue
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = help_epilog(cls())
        if not any("--print-config" in a.option_strings for a in p._actions):
            p.add_argument(
                "--print-config", action="store_true", help="print the resolved config and exit"
            )


def print_config(command: str, args: argparse.Namespace) -> None:
    """Build the command's config from ``args`` (validated) and print it as YAML."""
    print(CONFIG_COMMANDS[command][1](args).to_yaml(), end="")
