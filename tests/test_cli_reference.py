"""The README's CLI table is generated from the parsers, and every argument has help text."""

from __future__ import annotations

from pathlib import Path

from flowception.eval.cli import build_parser, cli_reference, command_arguments, leaf_commands

ROOT = Path(__file__).resolve().parents[1]


def test_readme_cli_table_is_the_generated_one():
    """Regenerate with ``flowception config cli-table --write`` after changing a parser."""
    assert cli_reference() in (ROOT / "README.md").read_text()


def test_table_does_not_depend_on_where_the_checkout_lives():
    """CI checks out elsewhere: no absolute path of this checkout may enter the table."""
    assert str(ROOT) not in cli_reference()


def test_every_command_and_argument_has_help():
    missing = []
    for path, parser, helptext in leaf_commands(build_parser()):
        if not helptext:
            missing.append(path)
        missing += [f"{path} {name}" for name, h in command_arguments(parser) if not h]
    assert not missing, missing


def test_table_lists_every_option_of_a_command():
    table = cli_reference()
    row = next(line for line in table.splitlines() if line.startswith("| `flowception submit`"))
    for option in ("--address", "--follow", "--working-dir", "--pip", "--print-config"):
        assert f"`{option}" in row, option
