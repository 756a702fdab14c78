"""The training CLI: config errors before Ray, and job submission to a real local Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flowception.cluster.config import TrainConfig
from flowception.cluster.mlflow_server import free_port
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


def test_submit_runtime_env_pins_requirements():
    from flowception.cluster.submit import entrypoint, pinned_requirements, runtime_env

    pins = pinned_requirements()
    assert "ray[data,train,default]==2.60.0" in pins and "deepspeed==0.19.8" in pins
    assert not any(p.startswith("torch") for p in pins)
    env = runtime_env(pip=True, env={"X": "1"})
    assert env["working_dir"] == str(ROOT) and ".venv" in env["excludes"]
    assert env["pip"]["packages"] == pins and env["env_vars"]["X"] == "1"
    assert entrypoint(str(ROOT / "configs/demo-cpu.yaml"), ["a.b=c d"]) == (
        "python -m flowception.eval.cli train configs/demo-cpu.yaml 'a.b=c d'"
    )


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head --block`` with a dashboard on free loopback ports; stopped after."""
    temp = tmp_path_factory.mktemp("rh")
    dash = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={free_port()}", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={free_port()}", "--dashboard-host=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=open(temp / "head.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (temp / "head.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:  # up, and asking for the auth token
                break
            except OSError:
                time.sleep(1)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``flowception ARGS`` in a fresh process (Ray reads its auth mode at import)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_submit_follow_status_stop(ray_head, tmp_path):
    from flowception.pipelines.sources import moving_mnist, write_clips

    shards = tmp_path / "shards"
    write_clips(
        moving_mnist(8, size=32, min_frames=4, max_frames=4, seed=0), str(shards), max_samples=4
    )
    overrides = [
        f"data.shards={shards}", "data.num_frames=4", "data.frame_budget=16", "data.max_batch_size=4",
        "steps=2", "data.epochs=2", "checkpoint.every_steps=2", "tracking.enabled=false", "cluster.cpus_per_worker=0.5",
        f"cluster.storage_path={tmp_path / 'runs'}", "cluster.name=job",
    ]  # fmt: skip
    done = _cli(
        "submit", "configs/demo-cpu.yaml", *overrides, "--address", ray_head, "--no-pip", "--follow"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    job_id = out.splitlines()[0].strip()
    assert f"job {job_id}: SUCCEEDED" in out
    summary = json.loads(out[out.index("{\n") : out.index("\n}") + 2])
    assert summary["step"] == 2 and summary["checkpoint"].endswith("step_0000002")
    assert (tmp_path / "runs/job/step_0000002/manifest.json").exists()

    assert _cli("status", job_id, "--address", ray_head).stdout.strip() == "SUCCEEDED"
    assert "not running" in _cli("stop", job_id, "--address", ray_head).stdout

    # a second job, stopped while it runs
    args = ["submit", "configs/demo-cpu.yaml", *overrides[:-1], "cluster.name=stopped"]
    assert (
        _cli(*args, "--address", ray_head, "--no-pip", "--submission-id", "to-stop").returncode == 0
    )
    assert "stop requested" in _cli("stop", "to-stop", "--address", ray_head).stdout
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        state = _cli("status", "to-stop", "--address", ray_head).stdout.strip()
        if state == "STOPPED":
            break
        time.sleep(2)
    assert state == "STOPPED"


@pytest.mark.slow
def test_sweep_and_eval_submit_as_ray_jobs(ray_head, tmp_path):
    """`flowception sweep/eval --address` validate here, then run the eval CLI as a Ray job."""
    run = tmp_path / "empty-run"
    run.mkdir()
    done = _cli("sweep", str(run), f"output_dir={tmp_path / 'out'}", "--address", ray_head, "--no-pip",
                "--follow")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("submitted ")
    assert "every checkpoint already has a result" in done.stdout  # printed by the job
    bad = _cli("eval", str(run), "num_vidoes=3", "--address", ray_head)
    assert bad.returncode == 2 and "num_vidoes" in bad.stderr  # refused before submitting
