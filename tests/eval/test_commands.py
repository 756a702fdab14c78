"""``flowception assets i3d``: the real conversion through the console entry point."""

from __future__ import annotations

import json
from pathlib import Path

from flowception.eval.assets import sha256_bytes
from flowception.eval.cli import main


def test_assets_i3d_writes_weights_and_sidecar(tmp_path: Path, i3d_weights: Path, capsys):
    out = tmp_path / "nested" / "i3d.safetensors"
    assert main(["assets", "i3d", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert printed == sidecar
    assert sidecar["sha256"] == sha256_bytes(out.read_bytes())
    # The conversion is deterministic: same bytes as the session fixture's.
    assert out.read_bytes() == i3d_weights.read_bytes()


def test_assets_i3d_missing_source_is_one_clear_error(tmp_path: Path, capsys):
    missing = tmp_path / "absent.ckpt"
    assert main(["assets", "i3d", "--source", str(missing), "--out", str(tmp_path / "x")]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_assets_i3d_rejects_a_foreign_pickle(tmp_path: Path, capsys):
    import pickle

    import numpy as np

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": {"Conv_0": {"kernel": np.zeros(3)}}}))
    assert main(["assets", "i3d", "--source", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert f"{bad}" in capsys.readouterr().err


def test_assets_i3d_refuses_non_numpy_pickles(tmp_path: Path, capsys):
    import collections
    import pickle

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps(collections.OrderedDict(params={}, batch_stats={})))
    assert main(["assets", "i3d", "--source", str(bad), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}" in err and "refusing to unpickle collections.OrderedDict" in err
