"""User-facing errors are one line saying what to do: no traceback for a missing credential,
a wrong path or a bad override; secrets in the message are redacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT):
    return subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def test_missing_s3_credentials_is_one_line(s3_bucket, s3_endpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_ENDPOINT_URL=s3_endpoint, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))  # fmt: skip
    out = _cli("data", "check", "--shards", f"{s3_bucket}/train", env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "no S3 credentials found" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]


def test_wrong_path_and_bad_override_are_one_line(tmp_path):
    out = _cli("train", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "missing.yaml" in out.stderr and "not found" in out.stderr
    out = _cli("train", "configs/demo-cpu.yaml", "tracking.tracking_uri=http://bob:hunter2@h:1",
               "optim.lr=fast", "--print-config")  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "OptimConfig.lr='fast'" in out.stderr


def test_secrets_in_error_messages_are_redacted(capsys):
    from flowception.eval.cli import main

    assert main(["train", "configs/demo-cpu.yaml", "--print-config",
                 "cluster.name=https://bob:hunter2@example.invalid/x"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "hunter2" not in err and "ClusterConfig.name='https://bob:***@example.invalid" in err, (
        err
    )
