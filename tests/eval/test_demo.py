"""`flowception demo --quick` end to end: data, real services, training, samples, eval."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """The README's demo at --quick size, as a user runs it (own process, own services)."""
    out = tmp_path / "demo"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()  # the commit the run is made from (taken before it starts)
    proc = subprocess.run(
        [sys.executable, "-m", "flowception.eval.cli", "demo", "--quick", "--out", str(out), "--steps", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for k in range(1, 9):
        assert f"[{k}/8]" in proc.stdout
    assert "MLflow UI:" in proc.stdout and "Flowception demo finished" in proc.stdout
    # A person reads stages, bars and the summary; Ray's and the workers' lines go to the log.
    log = (out / "demo.log").read_text()
    assert f"Full log:     {out.resolve() / 'demo.log'}" in proc.stdout
    assert "(pid=" not in proc.stdout and "RayTrainWorker" not in proc.stdout
    assert "RayTrainWorker" in log and "step " in log
    assert len(proc.stdout.splitlines()) < 150, len(proc.stdout.splitlines())
    assert "How the model compares with the real data" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    ev = summary["eval"]
    fvd_key = next(k for k in ev if re.fullmatch(r"fvd\d+\w*_10f", k))
    assert f"{fvd_key} = " in proc.stdout
    for key in (fvd_key, "length/wasserstein"):
        assert math.isfinite(ev[key]), key
    assert any(k.endswith("temporal_flickering") and math.isfinite(v) for k, v in ev.items())
    # subject consistency uses the I3D clip: a 20-step model may generate shorter videos,
    # which are left out (and counted), never padded
    subject = next(v for k, v in ev.items() if k.endswith("subject_consistency_i3d")
                   and not k.startswith("real/"))  # fmt: skip
    assert math.isfinite(subject) or ev[f"{fvd_key}/skipped_fake"] > 0
    # the unconditional eval: its own length law on the same real clips (--quick: no FVD)
    un = summary["eval_unconditional"]
    assert "unconditional (no frame given):" in proc.stdout
    assert math.isfinite(un["length/wasserstein"])
    assert un["length/mean_data"] == ev["length/mean_data"]
    assert un["real/vbench/temporal_flickering"] == ev["real/vbench/temporal_flickering"]
    assert not any(k.endswith("subject_consistency_i3d") or k.startswith("fvd") for k in un)
    lengths = summary["sample_lengths"]
    assert set(lengths) == {"image_to_video", "unconditional"}
    # digit identity: the classifier's reading of the 4 + 4 samples beside the 12 test clips'
    digits = summary["digits"]
    assert "digit identity (an MNIST classifier" in proc.stdout
    assert (digits["eval/digits/videos"], digits["eval/unconditional/digits/videos"]) == (4, 4)
    assert digits["eval/real/digits/videos"] == 12
    shares = ("eval/digits/context_kept", "eval/digits/identity_kept",
              "eval/real/digits/context_kept", "eval/real/digits/identity_kept",
              "eval/unconditional/digits/identity_kept",
              "eval/unconditional/real/digits/identity_kept")  # fmt: skip
    assert all(0 <= digits[k] <= 1 for k in shares), digits
    assert (out / "assets" / "digit_cnn_32px_60.pt").exists()  # kept for the next run
    assert all(2 <= n <= 16 for v in lengths.values() for n in v)
    for f in (
        "samples/image_to_video/frame_grid.png",
        "samples/unconditional/frame_grid.png",
        "loss_curves.png",
    ):
        assert (out / f).stat().st_size > 5000, f

    # MLflow (the demo stopped its server): restart it on the same store and read the runs back
    from mlflow.tracking import MlflowClient

    from flowception.cluster.mlflow_server import mlflow_server

    with mlflow_server(out / "mlflow") as uri:
        client = MlflowClient(uri)
        run = client.get_run(summary["mlflow_run_id"])
        metrics = run.data.metrics
        for key in ("loss", "loss_velocity", "loss_insertion", "train_flops", "diag/rate_mean",
                    "diag/expected_length", f"eval/{fvd_key}", "eval/unconditional/length/wasserstein"):  # fmt: skip
            assert key in metrics, key
        assert metrics["eval/unconditional/length/wasserstein"] == un["length/wasserstein"]
        for key in shares:
            assert metrics[key] == pytest.approx(digits[key]), key
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"demo_samples", "plots"} <= arts
        children = client.search_runs([run.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")  # fmt: skip
        assert [c.data.tags["flowception.eval_status"] for c in children] == ["done", "done"]
        tasks = {c.data.tags["flowception.eval_task"]: c for c in children}
        assert set(tasks) == {"image_to_video", "unconditional"}
        assert tasks["unconditional"].info.run_name.endswith("-unconditional")
        # What the MLflow UI shows for the demo run: the commit, system metrics, and the
        # exported model registered under the run's name, tied to its eval run.
        assert run.data.tags["mlflow.source.git.commit"] == head
        assert "system/cpu_utilization_percentage" in metrics
        (version,) = client.search_model_versions(f"run_id='{run.info.run_id}'")
        assert version.name == run.info.run_name
        assert tasks["image_to_video"].data.tags["flowception.model_version"] == str(
            version.version
        )
        assert version.tags["flowception.eval_run"] == tasks["image_to_video"].info.run_id
        assert (
            version.tags["flowception.eval_run.unconditional"] == tasks["unconditional"].info.run_id
        )

    # the EMA weights that samples and eval use were trained (not the zero-initialised heads)
    from safetensors.torch import load_file

    ema = load_file(str(Path(summary["export"]) / "ema.safetensors"))
    assert float(ema["velocity_head.linear.weight"].abs().sum()) > 0


def _mean_step(videos) -> float:
    """Mean px (L1) a frame's intensity centroid moves to the next frame, over all clips."""
    steps = []
    for v in videos:
        w = v[..., 0].astype(np.float64)  # (T, H, W)
        ys, xs = np.mgrid[: w.shape[1], : w.shape[2]]
        c = np.stack([(w * ys).sum((1, 2)), (w * xs).sum((1, 2))], -1) / w.sum((1, 2))[:, None]
        steps += list(np.abs(np.diff(c, axis=0)).sum(1))
    return float(np.mean(steps))


def test_demo_speed_reaches_the_shards(tmp_path):
    """``flowception demo --speed``: the demo's clips move at that speed (their own folder)."""
    from flowception.eval import demo
    from flowception.pipelines.vae_train import shard_videos

    got = {}
    for speed in (None, 0.5):
        plan = demo.DemoPlan.make(False, None, speed)  # what run_demo builds from --speed
        plan = dataclasses.replace(plan, train_videos=4, test_videos=2)
        data = demo.make_data(tmp_path, plan)
        videos, counts = shard_videos(data["train"], size=32, channels=1)
        assert counts == {"ok": 4}, counts
        got[speed] = _mean_step(videos)
    assert Path(data["train"]).parent.name == "moving_mnist_1digit_0.5px"
    # the writer is seeded: the same clips (digits, places, directions) at 0.5 against the
    # default 1.125 px/frame; digits sit at whole pixels, hence the tolerance
    assert 0.35 < got[0.5] / got[None] < 0.55, got


def test_demo_rejects_a_bad_speed_before_any_work(tmp_path):
    """A speed make-shards cannot draw is a one-line usage error; nothing is made."""
    out = tmp_path / "demo"
    for bad, says in (("40", "40 px/frame outside [0, 18]"), ("fast", "'fast' is not a number")):
        proc = subprocess.run(
            [sys.executable, "-m", "flowception.eval.cli", "demo", "--out", str(out), "--speed", bad],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert (
            proc.stderr.strip().splitlines()[-1]
            == f"flowception demo: error: argument --speed: {says}"
        )
        assert not out.exists()
