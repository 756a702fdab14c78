"""Checkpoint completeness rules on real files, locally and on the moto S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowception.cluster import checkpoint, storage
from flowception.cluster.config import TrainConfig, load_config
from flowception.model.config import model_config
from flowception.pipelines.ingest import DataCursor, Position

ROOT = Path(__file__).resolve().parents[2]


def _cursor(rank: int, position: Position, *, samples: int) -> bytes:
    """Rank ``rank``'s data cursor of a 2-rank job, as the workers write it."""
    positions = tuple(position if r == rank else None for r in range(2))
    cursor = DataCursor(world=2, positions=positions, samples=((0, samples),))
    return json.dumps(cursor.to_dict()).encode()


def _write_checkpoint(run: Path, step: int, *, manifest: bool = True) -> Path:
    """A checkpoint directory as the workers stage it (files of two ranks + manifest)."""
    cfg = load_config(ROOT / "configs/demo-cpu.yaml")
    staged = run / f"{checkpoint.step_dir_name(step)}.partial"
    (staged / "ds").mkdir(parents=True)
    files = {
        "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"a" * 10,
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"b" * 12,
        "cursor_rank000.json": _cursor(0, Position(epoch=0, unit=1, pos=2), samples=5),
        "cursor_rank001.json": _cursor(1, Position(epoch=0, unit=2, pos=0), samples=3),
        "config.yaml": cfg.to_yaml().encode(),
    }
    for name, data in files.items():
        (staged / name).write_bytes(data)
    if manifest:
        described = checkpoint.describe_staged(staged)
        checkpoint.write_manifest(staged, described, cfg=cfg, step=step, world_size=2)
    return checkpoint.finalize_local(staged)


def test_step_dir_names_are_zero_padded():
    assert checkpoint.step_dir_name(1000) == "step_0001000"
    assert checkpoint.STEP_RE.match("step_0001000")
    assert not checkpoint.STEP_RE.match("step_0001000.partial")


def test_only_complete_checkpoints_count(tmp_path):
    run = tmp_path / "run"
    _write_checkpoint(run, 2)
    latest = _write_checkpoint(run, 4)
    assert checkpoint.resolve_checkpoint(str(run)) == str(latest)

    # a crash before the manifest: the directory exists, but it is not a checkpoint
    _write_checkpoint(run, 6, manifest=False)
    # a crash while staging: only a .partial directory
    (run / "step_0000008.partial").mkdir()
    # a partial upload: the manifest arrived, one listed file did not
    torn = _write_checkpoint(run, 10)
    (torn / "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    # a truncated file: wrong size
    short = _write_checkpoint(run, 12)
    (short / "cursor_rank001.json").write_text("{}")

    assert [s for s, _ in checkpoint.list_checkpoints(str(run))] == [2, 4]
    assert checkpoint.resolve_checkpoint(str(run)) == str(latest)
    assert checkpoint.resolve_checkpoint(str(run / "step_0000006")) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.fetch(str(run / "step_0000010"))


def test_resume_point_prefers_the_runs_own_checkpoint(tmp_path):
    old = _write_checkpoint(tmp_path / "old", 4)
    new_run = tmp_path / "new"
    assert checkpoint.resume_point(str(new_run), None) is None
    assert checkpoint.resume_point(str(new_run), str(tmp_path / "old")) == str(old)
    own = _write_checkpoint(new_run, 6)
    assert checkpoint.resume_point(str(new_run), str(old)) == str(own)
    with pytest.raises(FileNotFoundError, match="resume_from"):
        checkpoint.resume_point(str(tmp_path / "none"), str(tmp_path / "missing"))


def test_merged_cursor_is_the_union_of_ranks(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "run", 2)
    cursor = DataCursor.from_dict(checkpoint.merged_cursor(str(ckpt)))
    assert cursor.positions == (Position(epoch=0, unit=1, pos=2), Position(epoch=0, unit=2, pos=0))
    assert cursor.samples == ((0, 8),)


def test_upload_to_s3_manifest_last_and_listing(tmp_path, s3_bucket):
    local = _write_checkpoint(tmp_path / "run", 3)
    run_uri = f"{s3_bucket}/runs/r1"
    checkpoint.upload(local, f"{run_uri}/{local.name}")
    # an upload torn before the manifest (the manifest goes last) is not listed
    fs, path = storage.resolve(f"{run_uri}/step_0000009")
    local_fs = storage.pafs.LocalFileSystem()
    names = [n for n in storage.file_sizes(local_fs, str(local)) if n != checkpoint.MANIFEST]
    storage.upload_files(local, fs, path, names[:2])
    found = checkpoint.list_checkpoints(run_uri)
    assert found == [(3, f"{run_uri}/step_0000003")]
    fetched = checkpoint.fetch(found[0][1], dest=tmp_path / "dl")
    assert sorted(storage.file_sizes(storage.pafs.LocalFileSystem(), str(fetched))) == sorted(
        storage.file_sizes(storage.pafs.LocalFileSystem(), str(local))
    )


def test_model_config_diff_names_fields():
    a, b = model_config("tiny"), model_config("tiny", width=64, depth=3)
    assert checkpoint.model_config_diff(a, b) == ["width: 32 != 64", "depth: 2 != 3"]
    assert checkpoint.model_config_diff(a, a) == []


def test_config_yaml_round_trip_in_checkpoint(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "run", 2)
    import yaml

    cfg = TrainConfig.from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    assert cfg == load_config(ROOT / "configs/demo-cpu.yaml")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.hash() and manifest["world_size"] == 2


def _flip(path: Path, n: int = 64) -> None:
    """Invert up to ``n`` bytes in the middle of ``path``: same size, different content."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_and_resume_falls_back(tmp_path, caplog):
    run = tmp_path / "run"
    good = _write_checkpoint(run, 2)
    bad = _write_checkpoint(run, 4)
    victim = bad / "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    size = victim.stat().st_size
    _flip(victim)
    assert victim.stat().st_size == size  # a size check cannot see it
    with caplog.at_level("WARNING", logger="flowception.checkpoint"):
        assert [s for s, _ in checkpoint.list_checkpoints(str(run))] == [2]
        assert checkpoint.resume_point(str(run), None) == str(good)  # the newest that verifies
        assert checkpoint.resolve_checkpoint(str(bad)) is None
    assert (
        "step_0000004 skipped: ds/zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256" in caplog.text
    )
    with pytest.raises(FileNotFoundError, match="zero_pp_rank_1.*sha256"):
        checkpoint.fetch(str(bad))


def test_malformed_manifests_are_skipped_and_logged(tmp_path, caplog):
    run = tmp_path / "run"
    good = _write_checkpoint(run, 2)
    for step, edit in (
        (4, lambda m: m.pop("files")),  # the crash: a manifest without files
        (6, lambda m: m["files"].update({"config.yaml": 12})),  # an old size-only entry
        (8, lambda m: m.update(step="8")),
    ):
        ckpt = _write_checkpoint(run, step)
        manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
        edit(manifest)
        (ckpt / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    (_write_checkpoint(run, 10) / checkpoint.MANIFEST).write_text("{not json")
    with caplog.at_level("WARNING", logger="flowception.checkpoint"):
        assert checkpoint.list_checkpoints(str(run)) == [(2, str(good))]
        assert checkpoint.resolve_checkpoint(str(run)) == str(good)
    for needle in ("step_0000004 skipped: no 'files'", "step_0000006 skipped: manifest entry",
                   "step_0000008 skipped: manifest key 'step'", "step_0000010 skipped: manifest.json is not JSON"):  # fmt: skip
        assert needle in caplog.text, needle


def test_s3_flipped_bytes_are_caught(tmp_path, s3_bucket):
    local = _write_checkpoint(tmp_path / "run", 3)
    run_uri = f"{s3_bucket}/runs/flip"
    checkpoint.upload(local, f"{run_uri}/{local.name}")
    assert [s for s, _ in checkpoint.list_checkpoints(run_uri)] == [3]
    _flip(local / "cursor_rank001.json", n=4)  # re-upload one file, same size, other bytes
    fs, path = storage.resolve(f"{run_uri}/{local.name}")
    with fs.open_output_stream(f"{path}/cursor_rank001.json") as f:
        f.write((local / "cursor_rank001.json").read_bytes())
    assert checkpoint.list_checkpoints(run_uri) == []
    with pytest.raises(FileNotFoundError, match="cursor_rank001.json: sha256"):
        checkpoint.fetch(f"{run_uri}/{local.name}", dest=tmp_path / "dl")
