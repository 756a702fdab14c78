"""Reading a checkpoint runs no code, and flipped bytes are caught by content.

A real one-rank DeepSpeed checkpoint (``tests.fixtures.deepspeed_single``) is copied
once per file kind with that file replaced by a payload: a pickle whose
``__reduce__`` writes a marker file, the manifest rewritten to match (whoever can
write the bucket can write the manifest too). Export, eval's loader and a real
DeepSpeed restore must refuse every copy without the marker appearing.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from flowception.cluster import checkpoint, safe_io

ROOT = Path(__file__).resolve().parents[2]
KINDS = (
    "ema.safetensors",
    "rng_rank000.safetensors",
    "ds/mp_rank_00_model_states.pt",
    "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "config.yaml",
    "cursor_rank000.json",
)


class Payload:
    """Unpickling it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _ds(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.deepspeed_single", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "step_0000001"
    _ds("save", str(out), "2")
    return out


def _plant(src: Path, dest: Path, kind: str, marker: Path) -> Path:
    shutil.copytree(src, dest)
    target = dest / kind
    if kind == "config.yaml":  # yaml's code-running tag
        target.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    elif kind.endswith(".json"):
        target.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"module": Payload(marker)}, target)
    manifest = json.loads((dest / checkpoint.MANIFEST).read_text())
    manifest["files"] = {
        k: v for k, v in safe_io.describe_files(dest).items() if k != checkpoint.MANIFEST
    }
    (dest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    return dest


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "ran"
    torch.save(Payload(marker), tmp_path / "p.pt")
    torch.load(tmp_path / "p.pt", weights_only=False)  # what the old loaders did
    assert marker.exists()


@pytest.mark.slow
def test_no_checkpoint_file_runs_code(real_checkpoint, tmp_path):
    marker = tmp_path / "ran"
    # the pristine checkpoint loads everywhere (the refusals below are not a broken loader)
    checkpoint.export_weights(real_checkpoint, tmp_path / "export")
    net, _ = checkpoint.load_inference_model(real_checkpoint)
    planted = [_plant(real_checkpoint, tmp_path / kind.replace("/", "_"), kind, marker)
               for kind in KINDS]  # fmt: skip
    refused = set()
    for d in planted:
        for read in (
            lambda d=d: checkpoint.export_weights(d, tmp_path / f"export-{d.name}"),
            lambda d=d: checkpoint.load_inference_model(d),
        ):
            try:
                read()
            except Exception:  # noqa: BLE001 - a refusal is fine, as long as nothing ran
                refused.add(d.name)
            assert not marker.exists(), d.name
    # the files export reads were refused (rng and cursor files are for resume only)
    assert refused >= {"ema.safetensors", "ds_mp_rank_00_model_states.pt",
                       "ds_zero_pp_rank_0_mp_rank_00_optim_states.pt", "config.yaml"}  # fmt: skip
    out = _ds("restore", str(real_checkpoint), *map(str, planted))
    results = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
    assert results[0]["ok"], results[0]
    by_dir = {Path(r["dir"]).name: r for r in results[1:]}
    for kind in ("ema.safetensors", "rng_rank000.safetensors", "ds_mp_rank_00_model_states.pt",
                 "ds_zero_pp_rank_0_mp_rank_00_optim_states.pt", "cursor_rank000.json"):  # fmt: skip
        assert not by_dir[kind]["ok"], kind
    assert not marker.exists()


def test_no_unpickling_loader_in_the_packages():
    """No code path of the packages asks for full unpickling of a file."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for pkg in ("model", "pipelines", "cluster", "eval")
        for path in (ROOT / pkg).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "weights_only=False" in line or "pickle.load" in line
    ]
    assert not found, found


@pytest.mark.slow
def test_reading_an_s3_checkpoint_leaves_no_copy_behind(
    real_checkpoint, s3_bucket, tmp_path, monkeypatch
):
    """Export and eval's loader download an ``s3://`` checkpoint to scratch space and
    remove it afterwards, also when the checkpoint is refused (a sweep reads many)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # gettempdir() of this process
    good, bad = f"{s3_bucket}/runs/leak/step_0000001", f"{s3_bucket}/runs/leak/step_0000002"
    checkpoint.upload(real_checkpoint, good)
    checkpoint.upload(
        _plant(real_checkpoint, tmp_path / "bad", "ema.safetensors", tmp_path / "m"), bad
    )
    checkpoint.export_weights(good, tmp_path / "export")
    assert (tmp_path / "export/ema.safetensors").exists()
    checkpoint.load_inference_model(good)
    with pytest.raises(Exception):  # noqa: B017 - the refusal's kind is the safety test's
        checkpoint.load_inference_model(bad)
    with pytest.raises(ValueError, match="needs dest"):
        checkpoint.fetch(good)
    assert sorted(p.name for p in scratch.iterdir()) == []
