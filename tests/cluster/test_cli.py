"""The training CLI: config errors before Ray, and job submission to a real local Ray head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flowception.cluster.config import TrainConfig
from flowception.eval.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_train_print_config_applies_overrides(capsys):
    assert (
        main(["train", "configs/demo-cpu.yaml", "optim.lr=2e-4", "steps=9", "--print-config"]) == 0
    )
    cfg = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert cfg.optim.lr == pytest.approx(2e-4) and cfg.steps == 9


@pytest.mark.parametrize("command", ["train", "submit"])
def test_bad_override_fails_before_ray(command, capsys):
    args = [command, "configs/demo-cpu.yaml", "optim.lrr=1"]
    if command == "submit":
        args += ["--address", "http://127.0.0.1:1"]  # never contacted
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "unknown key" in err


@pytest.mark.parametrize(
    ("workers", "cpus", "cluster", "refused"),
    [(1, 2.0, 2.0, True), (2, 1.0, 2.0, True), (2, 0.5, 2.0, False), (1, 1.0, 2.0, False),
     (4, 1.0, 8.0, False), (4, 2.0, 8.0, True)],
)  # fmt: skip
def test_workers_that_leave_no_cpu_for_the_reader_are_named(workers, cpus, cluster, refused):
    from flowception.cluster.config import load_config
    from flowception.cluster.launch import reader_cpu_problem

    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        [f"cluster.num_workers={workers}", f"cluster.cpus_per_worker={cpus}"],
    )
    problem = reader_cpu_problem(cfg, cluster)
    assert (problem is not None) == refused, problem
    if refused:
        assert f"cluster.cpus_per_worker={cpus:g}" in problem and f"{cluster:g} CPUs" in problem


def test_train_on_a_local_head_too_small_for_the_reader_is_one_line(tmp_path):
    """Before: 1 worker holding both CPUs of a local head waited forever for its read task."""
    from flowception.pipelines.sources import moving_mnist, write_clips

    shards = tmp_path / "shards"
    write_clips(moving_mnist(4, size=32, min_frames=4, max_frames=4, seed=0), str(shards))
    cores = os.cpu_count()
    t0 = time.monotonic()
    out = _cli("train", "configs/demo-cpu.yaml", f"data.shards={shards}", "tracking.enabled=false",
               f"cluster.storage_path={tmp_path / 'runs'}", "cluster.num_workers=1",
               f"cluster.cpus_per_worker={cores}", timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("flowception train: error: cluster.num_workers=1 x "), line
    assert f"cluster.cpus_per_worker={cores}" in line and "read task" in line
    assert time.monotonic() - t0 < 120


def _cli(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``flowception ARGS`` in a fresh process (Ray reads its auth mode at import)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", *args], cwd=cwd or ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_submit_shared_fs_follow_status_stop(two_node, tmp_path):
    """--shared-fs (both nodes see this machine's disk), options passed through, stop, and
    one-line errors for an unknown job id."""
    from flowception.cluster.submit import client
    from flowception.pipelines.sources import moving_mnist, write_clips

    ray_head = two_node.address
    shards = tmp_path / "shards"
    write_clips(
        moving_mnist(8, size=32, min_frames=4, max_frames=4, seed=0), str(shards), max_samples=4
    )
    overrides = [
        f"data.shards={shards}", "data.num_frames=4", "data.frame_budget=16", "data.max_batch_size=4",
        "steps=2", "data.epochs=2", "checkpoint.every_steps=2", "tracking.enabled=false",
        "cluster.cpus_per_worker=0.5", "cluster.storage_path=runs", "cluster.name=job",
    ]  # fmt: skip
    opts = ["--address", ray_head, "--shared-fs", "--entrypoint-num-cpus", "0.25",
            "--metadata-json", '{"team": "video"}']  # fmt: skip
    done = _cli("submit", str(ROOT / "configs/demo-cpu.yaml"), *overrides, *opts, "--follow",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # the job's log too
    out = done.stdout
    job_id = out.splitlines()[0].strip()
    assert f"job {job_id}: SUCCEEDED" in out
    summary = json.loads(out[out.index("{\n") : out.index("\n}") + 2])
    assert summary["step"] == 2 and summary["checkpoint"].endswith("step_0000002")
    assert (tmp_path / "runs/job/step_0000002/manifest.json").exists()  # made absolute here
    info = client(ray_head).get_job_info(job_id)
    assert info.metadata["team"] == "video" and info.metadata["FLOWCEPTION_GIT_COMMIT"]
    assert "pip" not in info.runtime_env  # the cluster's own packages by default
    assert "--config-yaml" in info.entrypoint and "demo-cpu.yaml" not in info.entrypoint

    assert _cli("status", job_id, "--address", ray_head).stdout.strip() == "SUCCEEDED"
    assert "not running" in _cli("stop", job_id, "--address", ray_head).stdout
    for cmd in ("status", "logs", "stop"):
        bad = _cli(cmd, "raysubmit_nope", "--address", ray_head)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        assert bad.stderr.strip().endswith(f"job 'raysubmit_nope': no such job at {ray_head}")

    # a second job, stopped while it runs
    args = ["submit", str(ROOT / "configs/demo-cpu.yaml"), *overrides[:-1], "cluster.name=stopped"]
    assert _cli(*args, *opts, "--submission-id", "to-stop", cwd=tmp_path).returncode == 0
    assert "stop requested" in _cli("stop", "to-stop", "--address", ray_head).stdout
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        state = _cli("status", "to-stop", "--address", ray_head).stdout.strip()
        if state == "STOPPED":
            break
        time.sleep(2)
    assert state == "STOPPED"
