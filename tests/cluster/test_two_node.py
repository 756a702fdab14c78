"""The README's cluster commands on a two-node Ray cluster that shares nothing with the
submitting directory but S3 (moto) and MLflow: driven only through the Jobs API, from a
directory that is not the checkout.

One run of a tiny model: train with 2 workers (one per node) to the end of one epoch,
continue it and kill it with ``flowception stop``, resume the killed run with 1 worker,
evaluate a checkpoint with ``eval --address``, sweep twice (the second does nothing),
then check MLflow and where Ray ran what.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EVAL = ["eval.protocol.num_frames=10", "eval.protocol.resolution=64", "eval.protocol.name=fvd_t10",
        "num_videos=4", "batch_size=2", "eval.batch_size=2"]  # fmt: skip


def _cli(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
    return done


def _recipe(bucket: str) -> dict:
    """A tiny full-sequence model on 10-frame 32x32 clips (long enough for the FVD clip)."""
    return {
        "steps": 100, "seed": 0,
        "model": {"size": "tiny", "frame_size": [32, 32], "patch_size": 8, "in_channels": 1},
        "method": {"method": "full_sequence", "num_frames": 10, "max_frames": 10, "num_steps": 2},
        "data": {"shards": f"{bucket}/mm/train", "size": 32, "channels": 1, "num_frames": 10,
                 "min_frames": 10, "frame_budget": 20, "max_batch_size": 2, "epochs": 1,
                 "decode_workers": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "deepspeed": {"zero_stage": 0},
        "checkpoint": {"every_steps": 1000, "keep": None},
        "tracking": {"experiment": "two-node", "log_every": 1, "sample_every": 0},
        "cluster": {"num_workers": 2, "cpus_per_worker": 2, "storage_path": f"{bucket}/runs",
                    "name": "tn"},
    }  # fmt: skip


def _rank_consumed(run_ckpt: str, endpoint: str, data_cfg) -> list[set[tuple[int, int]]]:
    """``{(shard, position)}`` of epoch 0 that each rank's own cursor says it consumed."""
    from flowception.cluster import storage
    from flowception.pipelines.dataset import shard_list
    from flowception.pipelines.ingest import DataCursor, Position, SplitSpec

    fs, path = storage.resolve(run_ckpt, endpoint)
    manifest = json.loads(storage.read_text(fs, f"{path}/manifest.json"))
    shards = shard_list(data_cfg)
    spec = SplitSpec.from_config(data_cfg, len(shards))
    sizes = {i: s.num_samples for i, s in enumerate(shards)}
    out = []
    for name in sorted(n for n in manifest["files"] if n.startswith("cursor_rank")):
        cursor = DataCursor.from_dict(json.loads(storage.read_text(fs, f"{path}/{name}")))
        rank = int(name.removeprefix("cursor_rank").removesuffix(".json"))
        own = tuple(p if i == rank else Position() for i, p in enumerate(cursor.positions))
        c = dataclasses.replace(cursor, positions=own).consumed(0, spec)
        seen = {(s, i) for s in c.done for i in range(sizes[s])}
        seen |= {(s, i) for s, ranges in c.partial for lo, hi in ranges for i in range(lo, hi)}
        out.append(seen)
    return out


@pytest.mark.slow
def test_two_node_submit_resume_eval_sweep(
    two_node, s3_bucket, s3_endpoint, mlflow_server, i3d_weights, tmp_path
):
    import s3fs
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors, list_tasks

    from flowception.cluster.config import TrainConfig
    from flowception.cluster.submit import client as jobs_client
    from flowception.pipelines.sources import moving_mnist, write_clips

    # [0] data and detector on S3; a user directory that is not the checkout
    for split, n in (("train", 8), ("test", 4)):
        clips = moving_mnist(n, split=split, size=32, min_frames=10, max_frames=10, seed=1)
        write_clips(clips, f"{s3_bucket}/mm/{split}", max_samples=4)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    det = f"{s3_bucket}/assets/i3d.safetensors"
    fs.put(str(i3d_weights), det)
    fs.put(f"{i3d_weights}.json", f"{det}.json")
    user = tmp_path / "experiment"
    user.mkdir()
    recipe = _recipe(s3_bucket)
    (user / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "AWS_ENDPOINT_URL": s3_endpoint}
    env.pop("RAY_ADDRESS", None)
    addr = ["--address", two_node.address]
    evals = [f"eval.detector={det}", *EVAL]

    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    sha = sha.stdout.strip()  # the checkout's commit now (the user directory is not a repo)

    # [1] a local path is refused before anything is submitted
    bad = _cli(user, env, "submit", "tiny.yaml", "cluster.storage_path=runs", *addr)
    assert bad.returncode == 2 and "cluster.storage_path='runs'" in bad.stderr

    # [2] train: 2 workers (one per node) to the end of the epoch
    first = _cli(user, env, "submit", "tiny.yaml", *addr, "--follow")
    assert first.returncode == 0 and "SUCCEEDED" in first.stdout
    run = f"{s3_bucket}/runs/tn"
    from flowception.cluster.checkpoint import list_checkpoints

    (step_a, ckpt_a), = list_checkpoints(run, s3_endpoint)  # fmt: skip
    nodes = two_node.node_ids()
    workers = list_actors(address=two_node.address, filters=[("class_name", "=", "RayTrainWorker")])
    assert {a.node_id for a in workers} == set(nodes.values())  # one rank per node
    reads = [t for t in list_tasks(address=two_node.address, limit=10_000, raise_on_missing_output=False)
             if "ReadVideoShard" in t.name]  # fmt: skip
    assert {t.node_id for t in reads} == set(nodes.values())  # Ray Data ran on both nodes
    cfg = TrainConfig.from_dict(recipe)
    seen = _rank_consumed(ckpt_a, s3_endpoint, cfg.data)
    assert len(seen) == 2 and all(seen) and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 8  # every sample of the epoch, once

    # [3] continue it on the same 2 workers and kill it (flowception stop) once it has
    # trained past step_a: nothing may be left behind, and no checkpoint was written
    jobs = jobs_client(two_node.address)  # the Jobs API client the CLI uses
    started = _cli(user, env, "submit", "tiny.yaml", "data.epochs=200", *addr)
    assert started.returncode == 0
    job_id = started.stdout.splitlines()[0].strip()
    deadline = time.monotonic() + 600
    while not re.search(rf"\bstep {step_a + 2} loss=", jobs.get_job_logs(job_id)):
        alive = jobs.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING)
        assert alive, jobs.get_job_logs(job_id)[-3000:]
        assert time.monotonic() < deadline
        time.sleep(1)
    assert _cli(user, env, "stop", job_id, *addr).returncode == 0
    while not jobs.get_job_status(job_id).is_terminal():
        assert time.monotonic() < deadline
        time.sleep(1)
    assert jobs.get_job_status(job_id) == JobStatus.STOPPED
    s3fs.S3FileSystem.clear_instance_cache()
    assert [s for s, _ in list_checkpoints(run, s3_endpoint)] == [step_a]

    # [4] resume the killed run with 1 worker for a second epoch
    more = ["data.epochs=2", "cluster.num_workers=1"]
    second = _cli(user, env, "submit", "tiny.yaml", *more, *addr, "--follow")
    assert second.returncode == 0 and f"at step {step_a}" in second.stdout
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches listings in this process
    steps = [s for s, _ in list_checkpoints(run, s3_endpoint)]
    assert steps[0] == step_a and len(steps) == 2 and steps[1] > step_a
    for tmp in two_node.tmp_dirs.values():
        assert not list(tmp.glob("flowception-resume-*")), tmp  # no copies left behind

    # [5] eval one checkpoint, then sweep twice: the second finds nothing to do
    one = _cli(user, env, "eval", f"{run}/step_{step_a:07d}", *evals, *addr, "--follow")
    assert one.returncode == 0
    sweep = _cli(user, env, "sweep", run, *evals, *addr, "--follow")
    assert sweep.returncode == 0 and f"evaluating step {steps[1]}" in sweep.stdout
    assert f"evaluating step {step_a}" not in sweep.stdout  # eval --address counted as done
    again = _cli(user, env, "sweep", run, *evals, *addr, "--follow")
    assert again.returncode == 0 and "nothing pending" in again.stdout

    # [6] MLflow: the submitting machine's commit, nested evals, FVD on the training steps
    client = MlflowClient(mlflow_server)
    info = json.loads(fs.cat(f"{run}/run.json"))
    parent = client.get_run(info["mlflow_run_id"])
    assert parent.data.tags["mlflow.source.git.commit"] == sha  # taken when first submitted
    assert parent.data.tags["mlflow.user"] and "tiny.yaml" in parent.data.tags["mlflow.source.name"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(int(c.data.tags["flowception.eval_step"]) for c in children) == steps
    fvd = [k for k in parent.data.metrics if k.startswith("eval/") and "fvd" in k.lower()]
    assert fvd, parent.data.metrics.keys()
    history = client.get_metric_history(parent.info.run_id, fvd[0])
    assert sorted(m.step for m in history) == steps
