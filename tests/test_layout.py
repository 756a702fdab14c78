"""House rules that hold for the whole tree: import direction and the CLI entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"ray", "deepspeed", "mlflow", "s3fs", "webdataset", "boto3", "av"}
# package -> first-party packages it may import
ALLOWED = {
    "model": {"model"},
    "pipelines": {"pipelines"},
    "cluster": {"cluster", "model", "pipelines"},
    "eval": {"eval", "cluster", "model", "pipelines"},
}


def _modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    """Top-level names imported, with ``flowception.X`` counted as ``X``."""
    out = set()
    for name in _modules(path):
        parts = name.split(".")
        out.add(parts[1] if parts[0] == "flowception" and len(parts) > 1 else parts[0])
    return out


def test_first_party_imports_use_the_one_import_name():
    """``from model import ...`` would import the user's ``model`` module, not ours."""
    bad = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for name in sorted(_modules(path)):
            if name.split(".")[0] in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)} imports {name} (use flowception.{name})")
    assert not bad, "\n".join(bad)


def test_imports_point_one_way():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for path in (ROOT / pkg).rglob("*.py"):
            first_party = _imports(path) & set(ALLOWED)
            for name in sorted(first_party - allowed):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if pkg == "model":
                for name in sorted(_imports(path) & HEAVY):
                    bad.append(f"{path.relative_to(ROOT)} imports {name} (model/ is pure PyTorch)")
    assert not bad, "\n".join(bad)


def test_no_bare_import_eval():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "eval" for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_console_command_help():
    out = subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "flowception" in out.stdout
