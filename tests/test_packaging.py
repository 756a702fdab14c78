"""The wheel installs one import name, ``flowception``, beside a user's own ``model`` module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files: setuptools writes build/ next to its sources.
    src = out / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = out.glob("flowception-*.whl")
    return path


def test_wheel_installs_only_the_flowception_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"flowception"}, top
    for pkg in ("model", "pipelines", "cluster", "eval", "eval/experiments"):
        assert f"flowception/{pkg}/__init__.py" in names
    assert "flowception/eval/kinetics400_classes.txt" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flowception = flowception.eval.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_works_beside_a_users_model_module(wheel, tmp_path):
    """A fresh venv gets the wheel (its dependencies from this one); the job's working dir has
    its own ``model.py`` and ``eval.py``; both ours and theirs import, and ours trains a step."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Dependencies (torch, ...) from this interpreter's site-packages, appended after the venv's
    # own: a plain path line, so this venv's editable finder for the checkout is not loaded.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    job = tmp_path / "job"
    job.mkdir()
    (job / "model.py").write_text("WHO = 'user'\n")
    (job / "eval.py").write_text("WHO = 'user-eval'\n")
    script = textwrap.dedent(
        """
        import model, eval as user_eval, torch
        import flowception.model.config as mc
        from flowception.model.dit import DiT
        from flowception.eval.cli import main  # noqa: F401
        assert model.WHO == "user" and user_eval.WHO == "user-eval"
        assert mc.__file__.startswith(SITE), mc.__file__
        net = DiT(mc.model_config("tiny", frame_size=(8, 8)))
        print("ok", sum(p.numel() for p in net.parameters()))
        """
    ).replace("SITE", repr(site))
    out = subprocess.run([py, "-c", script], cwd=job, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok ")
