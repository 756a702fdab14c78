"""Submission checks that need no cluster: paths, placeholders, runtime_env, the inline config,
provenance, and the sweep's done key and errors."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from flowception.cluster import submit
from flowception.cluster.config import TrainConfig
from flowception.eval.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/demo-cpu.yaml")
S3 = ["data.shards=s3://my-bucket/mm/train", "cluster.storage_path=s3://my-bucket/runs"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([], "data.shards"),  # the recipe's relative data/moving_mnist/train
        (["data.shards=s3://my-bucket/mm/train"], "cluster.storage_path"),  # 'runs'
        ([*S3, "checkpoint.resume_from=/abs/runs/x"], "checkpoint.resume_from"),
    ],
)
def test_local_path_on_a_remote_address_is_refused_before_submission(overrides, key, capsys):
    # the address is never contacted: the refusal comes first
    code = main(["submit", DEMO, *overrides, "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{key}=" in err and "s3://" in err and "--shared-fs" in err


def test_shared_fs_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = submit.resolved_train_config(DEMO, ["cluster.storage_path=runs"], shared_fs=True)
    assert cfg.data.shards == str(tmp_path / "data/moving_mnist/train")
    assert cfg.cluster.storage_path == str(tmp_path / "runs")


@pytest.mark.parametrize(
    "bad", ["data.shards=s3://my-bucket/YOUR_PREFIX/train", "data.shards=s3://My_Bucket/mm/train"]
)
def test_placeholders_and_impossible_buckets_are_refused(bad):
    with pytest.raises(ValueError, match="data.shards="):
        submit.resolved_train_config(DEMO, [*S3, bad], shared_fs=True)


def test_local_mlflow_store_is_refused():
    with pytest.raises(ValueError, match="local MLflow store"):
        submit.resolved_train_config(DEMO, [*S3, "tracking.tracking_uri=./mlruns"], shared_fs=False)


def test_config_travels_inline_and_round_trips():
    cfg = submit.resolved_train_config(DEMO, [*S3, "steps=7"], shared_fs=False)
    argv = shlex.split(shlex.join(submit.train_entrypoint(cfg.to_yaml())))
    assert argv[:5] == ["python", "-m", "flowception.cluster.submit", "train", "--config-yaml"]
    assert not any(a.endswith(".yaml") for a in argv)  # no path to a file the head cannot read
    assert TrainConfig.from_dict(yaml.safe_load(argv[5])) == cfg and cfg.steps == 7


def test_runtime_env_uses_the_image_unless_pip(tmp_path):
    env = submit.runtime_env(working_dir=tmp_path, env={"X": "1"})
    assert env["working_dir"] == str(tmp_path) and "pip" not in env
    pins = submit.runtime_env(working_dir=tmp_path, pip=True)["pip"]["packages"]
    names = {p.split("[")[0].split("==")[0].lower() for p in pins}
    assert names and not names & {"ray", "torch", "deepspeed"}
    assert all("==" in p for p in pins)
    extra = {"env_vars": {"Y": "2"}, "config": {"setup_timeout_seconds": 60}}
    merged = submit.runtime_env(working_dir=tmp_path, env={"X": "1"}, extra=extra)
    assert merged["env_vars"]["X"] == "1" and merged["env_vars"]["Y"] == "2"
    assert merged["config"] == {"setup_timeout_seconds": 60}


def test_working_dir_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="--working-dir"):
        submit.runtime_env(working_dir=tmp_path / "nope")


def test_provenance_is_the_working_dirs_commit_with_dirty_flag(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert submit.provenance(tmp_path)["FLOWCEPTION_GIT_COMMIT"] == sha
    (tmp_path / "a.txt").write_text("2")
    assert submit.provenance(tmp_path)["FLOWCEPTION_GIT_COMMIT"] == sha + "+dirty"


def test_mlflow_tags_from_provenance(monkeypatch):
    from flowception.cluster.launch import provenance_commit, provenance_tags

    monkeypatch.setenv("FLOWCEPTION_GIT_COMMIT", "a" * 40 + "+dirty")
    monkeypatch.setenv("FLOWCEPTION_USER", "alice")
    tags = provenance_tags(provenance_commit())
    assert tags["mlflow.source.git.commit"] == "a" * 40
    assert tags["flowception.git_dirty"] == "true" and tags["mlflow.user"] == "alice"


# --------------------------------------------------------------------------- eval / sweep


def test_eval_address_refuses_local_checkpoint_and_missing_detector(s3_bucket, capsys):
    code = main(["eval", "runs/x/step_0000002", "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint='runs/x/step_0000002'" in err and "--shared-fs" in err
    det = f"eval.detector={s3_bucket}/i3d.safetensors"
    code = main(
        ["eval", f"{s3_bucket}/runs/x/step_0000002", det, "--address", "http://127.0.0.1:1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "eval.detector=" in err and "no such file" in err


def test_sweep_address_refuses_a_local_output_dir(s3_bucket, capsys):
    run = f"{s3_bucket}/runs/x"
    det = f"eval.detector={s3_bucket}/i3d.safetensors"
    code = main(["sweep", run, det, "output_dir=out", "--address", "http://127.0.0.1:1"])
    assert code == 2 and "output_dir='out'" in capsys.readouterr().err


def _fake_run(
    root: Path, steps: list[int], *, world: int = 2, zero: int = 0, universal: bool = True
) -> Path:
    """A run directory with ``run.json`` and complete checkpoints (manifest as training writes it)."""
    from flowception.cluster import checkpoint
    from flowception.cluster.config import load_config

    cfg = load_config(DEMO, [f"deepspeed.zero_stage={zero}"])
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    for step in steps:
        d = run / f"step_{step:07d}"
        d.mkdir()
        (d / "x.bin").write_bytes(b"1234")
        if hasattr(checkpoint, "describe_staged"):  # sha256 manifests
            files = checkpoint.describe_staged(d)
        else:
            files = {"x.bin": 4}
        checkpoint.write_manifest(d, files, cfg=cfg, step=step, world_size=world)
        if not universal:  # as checkpoints were written before they carried the universal info
            manifest = json.loads((d / checkpoint.MANIFEST).read_text())
            del manifest["universal"]
            (d / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    return run


SHA = "eval.detector_sha256=" + "ab" * 32


def test_sweep_of_a_path_without_run_json_fails_naming_it(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope"), SHA]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "run.json" in err


def test_sweep_of_a_run_without_checkpoints_fails(tmp_path, capsys):
    run = _fake_run(tmp_path, [])
    assert main(["sweep", str(run), SHA, f"output_dir={tmp_path / 'out'}"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_sweep_dry_run_and_done_key(tmp_path, capsys, monkeypatch):
    from flowception.eval.job import load_job_config
    from flowception.eval.sweep import done_key

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run, out = _fake_run(tmp_path, [2, 4]), tmp_path / "out"
    base = [SHA, "num_videos=8", "num_real=8"]
    args = ["sweep", str(run), *base, f"output_dir={out}", "--dry-run"]
    assert main(args) == 0
    lines = capsys.readouterr().out
    assert "pending step 2" in lines and "pending step 4" in lines
    key = done_key(load_job_config(str(run), base))
    for step in (2, 4):
        (out / f"step_{step:07d}").mkdir(parents=True)
        (out / f"step_{step:07d}" / f"done-{key}").write_text(key)
    assert main(args) == 0
    assert "nothing pending" in capsys.readouterr().out
    # another protocol (more clips, another detector) or another task evaluates again
    assert done_key(load_job_config(str(run), [*base, "task=auto"])) == key
    for other in (
        "num_videos=64",
        "eval.protocol.num_fake=64",
        "eval.detector_sha256=" + "cd" * 32,
        "task=unconditional",
    ):
        assert done_key(load_job_config(str(run), [*base, other])) != key
    assert main([*args[:-1], "num_videos=64", "--dry-run"]) == 0
    assert "pending step 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("written", "resumed", "error"),
    [
        ((2, 2, True), (1, 2), None),  # ZeRO-2 partitions re-cut (universal checkpoint)
        ((2, 3, True), (4, 3), None),
        ((2, 2, False), (1, 2), "resume with cluster.num_workers=2"),  # older: no universal info
        ((2, 0, True), (1, 2), "resume with deepspeed.zero_stage=0"),
        ((2, 0, False), (1, 0), None),  # ZeRO-0 resizes
        ((2, 2, False), (2, 2), None),
    ],
)
def test_resume_is_refused_before_the_workers_start(tmp_path, written, resumed, error):
    from flowception.cluster.config import load_config
    from flowception.cluster.launch import check_resume

    run = _fake_run(tmp_path, [2], world=written[0], zero=written[1], universal=written[2])
    cfg = load_config(
        DEMO,
        [f"cluster.storage_path={tmp_path}", f"cluster.name={run.name}",
         f"cluster.num_workers={resumed[0]}", f"deepspeed.zero_stage={resumed[1]}"],
    )  # fmt: skip
    if error is None:
        assert check_resume(cfg) == str(run / "step_0000002")
    else:
        with pytest.raises(ValueError, match=error):
            check_resume(cfg)
