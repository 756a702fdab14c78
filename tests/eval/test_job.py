"""The eval job end to end on the local Ray cluster with the loopback MLflow server,
plus config validation and run comparison."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowception.eval.cli import main as cli


@pytest.fixture(scope="module")
def eval_export(tmp_path_factory) -> Path:
    """Moving MNIST shards (train/test) and an export dir of a (random) tiny DiT."""
    from safetensors.torch import save_file

    from flowception.cluster.config import load_config
    from flowception.model.dit import DiT

    root = tmp_path_factory.mktemp("evaljob")
    for split, n in (("train", 4), ("test", 8)):
        assert cli(["data", "make-shards", "moving-mnist", "--out", str(root / "mm" / split), "--size", "32",
                    "--num-videos", str(n), "--min-frames", "10", "--max-frames", "14", "--split", split]) == 0  # fmt: skip
    cfg = load_config(None, [f"data.shards={root / 'mm' / 'train'}", "data.size=32", "data.num_frames=16",
                             "model.size=tiny", "model.frame_size=[32, 32]", "method.max_frames=14",
                             "method.num_steps=3", "method.task=image_to_video"])  # fmt: skip
    out = root / "run" / "step_0000040"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in DiT(cfg.model).state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    save_file(state, str(out / "ema.safetensors"))
    return out


def _overrides(i3d: Path, out: Path) -> list[str]:
    return [f"eval.detector={i3d}", "eval.protocol.num_frames=10", "eval.protocol.resolution=64",
            "eval.protocol.name=fvd_test_10f", "num_videos=6", "batch_size=3",
            f"output_dir={out}"]  # fmt: skip


@pytest.mark.slow
def test_eval_job_logs_metrics_and_samples(
    eval_export, i3d_weights, ray_local, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    from flowception.eval.job import load_job_config, run_eval

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("eval-job-test")
    parent = client.create_run(exp, run_name="train-run").info.run_id
    refs = tmp_path / "refs"
    cfg = load_job_config(str(eval_export), [*_overrides(i3d_weights, tmp_path / "out"),
                                             f"tracking_uri={mlflow_server}", f"run_id={parent}",
                                             f"eval.reference_cache={refs}"])  # fmt: skip
    res = run_eval(cfg)

    assert res.step == 40
    for key in ("fvd_test_10f", "vbench/temporal_flickering", "vbench/motion_smoothness",
                "vbench/dynamic_degree", "vbench/subject_consistency", "length/wasserstein"):  # fmt: skip
        assert key in res.metrics and np.isfinite(res.metrics[key]), key
    assert res.metrics["fvd_test_10f"] > 0
    assert res.params["fvd.non_standard"] is True  # 6 clips, far fewer than the protocol's 2048
    assert len(res.lengths) == 6 and max(res.lengths) <= 14 and min(res.lengths) >= 2
    assert sorted(res.data_lengths) == sorted(res.data_lengths) and min(res.data_lengths) >= 10
    # generated from the first frame of each eval video: length metric compares with the data
    assert res.metrics["length/mean_data"] == pytest.approx(np.mean(res.data_lengths))

    child = client.get_run(res.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["flowception.eval_status"] == "done"
    assert child.data.params["fvd.non_standard"] == "True"
    names = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {"frame_grid.png", "length_histogram.png", "summary.json", "videos"} <= names
    assert len(client.list_artifacts(res.mlflow_run_id, "videos")) == 6
    history = client.get_metric_history(parent, "eval/fvd_test_10f")
    assert [m.step for m in history] == [40]

    # the real clips' statistics were cached; a second evaluation reads them, not I3D,
    # and gives the same FVD and length law
    (cached,) = refs.glob("test-n6-*.npz")
    assert res.params["fvd.reference"] == str(cached)
    again = run_eval(dataclasses.replace(cfg, tracking_uri=None, run_id=None))
    assert again.params["fvd.reference"] == str(cached)
    assert again.metrics["fvd_test_10f"] == pytest.approx(res.metrics["fvd_test_10f"], rel=1e-6)
    assert again.data_lengths == res.data_lengths


def test_reference_cache_is_keyed_by_data_and_protocol(tmp_path):
    """The cache misses on any change to the real clips, and cached statistics give the
    same FVD as features computed in place."""
    from flowception.eval.config import EvalConfig
    from flowception.eval.fvd import save_reference
    from flowception.eval.job import cached_reference, reduce_metrics

    ev = EvalConfig.from_dict({"detector": "i3d.pt", "detector_sha256": "a" * 64,
                               "reference_cache": str(tmp_path), "metrics": ["fvd", "length"],
                               "protocol": {"num_frames": 10}})  # fmt: skip
    data = {"shards": "s3://b/mm/test", "size": 32}
    assert cached_reference(dataclasses.replace(ev, reference_cache=None), data, 8) == (None, None)
    uri, ref = cached_reference(ev, data, 8)
    assert ref is None and Path(uri).name.startswith("test-n8-") and ev.protocol.hash() in uri
    others = {cached_reference(ev, {**data, "size": 64}, 8)[0], cached_reference(ev, data, 9)[0],
              cached_reference(dataclasses.replace(ev, protocol=dataclasses.replace(
                  ev.protocol, seed=1)), data, 8)[0]}  # fmt: skip
    assert uri not in others and len(others) == 3

    rng = np.random.default_rng(0)
    row = lambda f, has=True: {"features": f, "has_clip": has, "length": 12}  # noqa: E731
    real = [row(f) for f in rng.normal(size=(6, 400))] + [row(np.full(400, np.nan), False)]
    fake = [row(f) for f in rng.normal(1.0, 1.0, size=(5, 400))]
    direct, _ = reduce_metrics(ev, real, fake)
    from flowception.eval.job import reference_stats

    stats, skipped = reference_stats(real)
    assert skipped == 1 and stats.count == 6
    save_reference(uri, stats, ev.protocol, detector_sha256="a" * 64, skipped=skipped)
    _, loaded = cached_reference(ev, data, 8)
    lengths_only = [{"length": 12}] * 7
    cached, _ = reduce_metrics(ev, lengths_only, fake, reference=loaded)
    assert cached == pytest.approx(direct)
    with pytest.raises(ValueError, match="got 1 real and 5 generated"):
        reduce_metrics(ev, real[:1], fake)


def test_eval_config_errors_name_the_key(tmp_path):
    from flowception.eval.job import load_job_config

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_vidoes'\]"):
        load_job_config("ckpt", ["num_vidoes=3"])
    with pytest.raises(ValueError, match="sampler: unknown key"):
        load_job_config("ckpt", ["sampler.steps=3"])
    with pytest.raises(ValueError, match="EvalJobConfig.task='video'"):
        load_job_config("ckpt", ["task=video"])
    assert cli(["eval", "ckpt", "actors=0"]) == 2  # validated before Ray starts


def test_bad_detector_fails_before_any_work(eval_export, i3d_weights, tmp_path):
    from flowception.eval.job import load_job_config, run_eval

    cfg = load_job_config(
        str(eval_export),
        [*_overrides(i3d_weights, tmp_path), "eval.detector_sha256='" + "0" * 64 + "'"],
    )
    with pytest.raises(ValueError, match=str(i3d_weights)):
        run_eval(cfg)


def test_compare_runs_table_and_plot(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from flowception.eval.compare import compare_runs

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("compare-test")
    ids = []
    for name, fvd in (("run-a", [30.0, 20.0, 25.0]), ("run-b", [40.0, 35.0, 33.0])):
        rid = client.create_run(exp, run_name=name).info.run_id
        for step, value in zip((100, 200, 300), fvd):
            client.log_metric(rid, "eval/fvd", value, step=step)
            client.log_metric(rid, "vbench/flicker", value / 100, step=step)
        ids.append(rid)
    table, png = compare_runs([ids[0], "run-b"], tracking_uri=mlflow_server, out_dir=tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| eval/fvd"))
    assert "25 | 20" in row and "33 | 33" in row  # final | best (lower is better)
    row = next(line for line in table.splitlines() if line.startswith("| vbench/flicker"))
    assert "0.25 | 0.3" in row  # higher is better
    assert png.stat().st_size > 5000
    with pytest.raises(ValueError, match="no-such-run"):
        compare_runs(["no-such-run"], tracking_uri=mlflow_server, out_dir=tmp_path)
