"""The one config system: recipes validate against their committed JSON Schemas, ``--help``
shows every field's default and description, overrides stand anywhere, ``--print-config``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from flowception.config import Config, load_yaml
from flowception.eval.cli import main
from flowception.eval.config_commands import CONFIG_COMMANDS, SCHEMAS, schema_text

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "train": sorted((ROOT / "configs").glob("*.yaml")),
    "experiment": sorted((ROOT / "configs" / "experiments").glob("*.yaml")),
}


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "configs" / "schema" / f"{kind}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_committed_schema_is_the_generated_one(kind):
    """Regenerate with ``flowception config schema --all`` when a field changes."""
    committed = (ROOT / "configs" / "schema" / f"{kind}.schema.json").read_text()
    assert committed == schema_text(kind)


@pytest.mark.parametrize(
    "kind, path", [(k, p) for k, paths in RECIPES.items() for p in paths], ids=lambda x: str(x)
)
def test_every_recipe_validates_against_its_schema(kind, path):
    assert path.read_text().splitlines()[0].endswith(f"schema/{kind}.schema.json")
    data = load_yaml(path)
    errors = [e.message for e in _validator(kind).iter_errors(data)]
    assert not errors, errors


@pytest.mark.parametrize(
    "kind, change",
    [
        ("train", {"optim": {"learning_rate": 0.1}}),
        ("train", {"cluster": {"use_gpu": "maybe"}}),
        ("train", {"data": {"frame_budget": 2.5}}),
        ("train", {"model": {"rate_head": "relu"}}),
        ("experiment", {"quick": {"stepz": 3}}),
        ("experiment", {"steps": "many"}),
    ],
)
def test_schema_rejects_what_the_config_rejects(kind, change):
    data = load_yaml(RECIPES[kind][0])
    for section, value in change.items():
        data[section] = {**data.get(section, {}), **value} if isinstance(value, dict) else value
    assert list(_validator(kind).iter_errors(data)), change


def test_help_shows_every_field_with_default_and_description(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    from flowception.cluster.config import TrainConfig

    for key in ("optim.lr", "data.decode_workers", "tracking.experiment", "model.size"):
        assert f"  {key} " in text
    assert "Peak learning rate" in text and "[float, default: 0.0003]" in text
    # the section default comes from the tree (TrainConfig.model is the registry's tiny)
    assert "[int, default: 32]" in text.split("model.width", 1)[1].split("\n")[1]
    assert TrainConfig.model_fields["model"].get_default(call_default_factory=True).width == 32


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", "configs/demo-cpu.yaml", "--print-config", "steps=7"], "steps: 7"),
        (["submit", "configs/demo-cpu.yaml", "--print-config", "optim.lr=2e-3"], "lr: 0.002"),
        (["eval", "runs/x", "--print-config", "num_videos=8"], "num_videos: 8"),
        (["sweep", "runs/x", "--dry-run", "num_videos=8", "--print-config"], "num_videos: 8"),
        (["experiment", "cost", "--quick", "--print-config", "repeats=5"], "repeats: 5"),
    ],
)
def test_print_config_with_overrides_anywhere(argv, expect, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"\n{expect}\n" in f"\n{out}" or f"  {expect}\n" in out


def test_bad_override_anywhere_is_one_line_naming_the_key(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["train", "configs/demo-cpu.yaml", "--print-config", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lrr" in err[0]
    with pytest.raises(SystemExit):
        main(["train", "configs/demo-cpu.yaml", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_every_config_command_builds_a_config_class():
    for name, (cls, _) in CONFIG_COMMANDS.items():
        assert issubclass(cls(), Config), name
