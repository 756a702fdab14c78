"""The eval job end to end on the local Ray cluster with the loopback MLflow server,
plus config validation and run comparison."""

from __future__ import annotations

from collections import Counter
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


def _split_lengths(shards: Path) -> list[int]:
    """Frame counts of a shard directory's videos, from the json sidecars (not the job)."""
    import json
    import tarfile

    lengths = []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.name.endswith(".json"):
                    lengths.append(json.loads(tar.extractfile(member).read())["num_frames"])
    return lengths


def _overrides(i3d: Path, out: Path) -> list[str]:
    return [f"eval.detector={i3d}", "eval.protocol.num_frames=10", "eval.protocol.resolution=64",
            "eval.protocol.name=fvd_test_10f", "num_videos=6", "batch_size=3",
            f"output_dir={out}"]  # fmt: skip


@pytest.mark.slow
def test_eval_job_logs_metrics_and_samples(
    eval_export, i3d_weights, ray_local, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    from flowception.eval.fvd import metric_key
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
    m = res.metrics
    fvd = res.params["fvd.key"]  # the counts actually used: 6 real, generated >= 10 frames
    n_fake = int(m[f"{fvd}/num_fake"])
    assert n_fake == 6 - m[f"{fvd}/skipped_fake"] and m[f"{fvd}/num_real"] == 6
    assert fvd == metric_key(6, n_fake, 10, 64) and "fvd_test_10f" not in m
    for key in (fvd, "fvd6_10f_64px/static", "fvd3_10f_64px/real_floor", "vbench/temporal_flickering",
                "proxy/motion_smoothness_farneback", "proxy/dynamic_degree_farneback",
                "proxy/subject_consistency_i3d", "length/wasserstein"):  # fmt: skip
        assert key in m and np.isfinite(m[key]), key
        if not key.startswith(("fvd", "length")):
            assert np.isfinite(m[f"real/{key}"]), key
    assert not any(k.startswith("vbench/subject") for k in m)  # no DINO weights given
    assert res.params["vbench.measured"] == "temporal_flickering"
    assert m[fvd] > 0
    assert res.params["fvd.key"] == fvd and res.params["fvd.covariance"].startswith("1/n")
    assert res.params["fvd.non_standard"] is True  # 6 clips, far fewer than the protocol's 2048
    assert len(res.lengths) == 6 and max(res.lengths) <= 14 and min(res.lengths) >= 2
    # the real lengths are the eval split's, read here from the shards' json sidecars
    split = Counter(_split_lengths(eval_export.parents[1] / "mm" / "test"))
    assert len(res.data_lengths) == 6 and not Counter(res.data_lengths) - split
    assert res.metrics["length/mean_data"] == pytest.approx(np.mean(res.data_lengths))
    assert m["real/length/mean"] == m["length/mean_data"]
    table = (res.output_dir / "summary.md").read_text()
    assert f"| {fvd} |" in table and "fvd3_10f_64px/real_floor=" in table
    assert "real/proxy/motion_smoothness_farneback=" in table

    child = client.get_run(res.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["flowception.eval_status"] == "done"
    assert child.data.params["fvd.non_standard"] == "True"
    assert child.data.metrics["real/proxy/motion_smoothness_farneback"] == pytest.approx(
        m["real/proxy/motion_smoothness_farneback"]
    )
    names = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {
        "frame_grid.png",
        "length_histogram.png",
        "summary.json",
        "summary.md",
        "videos",
    } <= names
    assert len(client.list_artifacts(res.mlflow_run_id, "videos")) == 6
    history = client.get_metric_history(parent, f"eval/{fvd}")
    assert [m.step for m in history] == [40]

    # the real clips' statistics were cached; a second evaluation reads them, not I3D,
    # and gives the same FVD and length law
    (cached,) = refs.glob("test-n6-*.npz")
    assert res.params["fvd.reference"] == str(cached)
    again = run_eval(cfg.replace(tracking_uri=None, run_id=None))
    assert again.params["fvd.reference"] == str(cached)
    assert again.metrics[fvd] == pytest.approx(m[fvd], rel=1e-6)
    for key in ("fvd6_10f_64px/static", "fvd3_10f_64px/real_floor",
                "real/proxy/dynamic_degree_farneback"):  # fmt: skip
        assert again.metrics[key] == pytest.approx(m[key], rel=1e-6), key
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
    assert cached_reference(ev.replace(reference_cache=None), data, 8) == (None, None)
    uri, ref = cached_reference(ev, data, 8)
    assert ref is None and Path(uri).name.startswith("test-n8-") and ev.protocol.hash() in uri
    others = {cached_reference(ev, {**data, "size": 64}, 8)[0], cached_reference(ev, data, 9)[0],
              cached_reference(ev.replace(protocol=ev.protocol.replace(seed=1)), data, 8)[0]}  # fmt: skip
    assert uri not in others and len(others) == 3

    rng = np.random.default_rng(0)
    real = [_row(f, 12 + i % 3, rng) for i, f in enumerate(rng.normal(size=(8, 400)))]
    real.append(_row(np.full(400, np.nan), 5, rng, has=False))
    fake = [_row(f, 11, rng) for f in rng.normal(1.0, 1.0, size=(5, 400))]
    direct, params = reduce_metrics(ev, real, fake)
    assert params["fvd.key"] == "fvd8r5g_10f"
    from flowception.eval.job import real_reference

    ref = real_reference(ev, real)
    assert ref.skipped == 1 and ref.gaussian.count == 8
    assert set(ref.baselines) >= {"fvd8_10f/static", "fvd4_10f/real_floor"}
    save_reference(uri, ref, ev.protocol, detector_sha256="a" * 64)
    _, loaded = cached_reference(ev, data, 8)
    no_features = [{**r, "features": np.full(400, np.nan), "static_features": np.full(400, np.nan)}
                   for r in real]  # fmt: skip
    cached, _ = reduce_metrics(ev, no_features, fake, reference=loaded)
    assert cached == pytest.approx(direct)
    with pytest.raises(ValueError, match="got 1 real and 5 generated"):
        reduce_metrics(ev, real[:1], fake)


def _row(features, length: int, rng, has: bool = True) -> dict:
    """A FeatureActor output row with random per-video scores."""
    return {"features": features, "static_features": features * 0.1, "has_clip": has,
            "length": length, "temporal_flickering": rng.uniform(0.9, 1.0),
            "motion_smoothness": rng.uniform(0.9, 1.0), "dynamic": float(rng.uniform() > 0.5),
            "subject_consistency_i3d": rng.uniform(0.9, 1.0)}  # fmt: skip


def test_reduce_metrics_reads_every_metric_against_the_real_clips():
    """Generated and real rows differ in every score, so each ``real/`` key must come from
    the real rows, the reference points from the real features only."""
    from flowception.eval.config import EvalConfig
    from flowception.eval.fvd import frechet_distance, gaussian_from_features
    from flowception.eval.job import reduce_metrics, side_by_side

    ev = EvalConfig.from_dict({"detector": "i3d.pt", "detector_sha256": "a" * 64,
                               "protocol": {"num_frames": 10}})  # fmt: skip
    rng = np.random.default_rng(1)
    real_f, fake_f = rng.normal(size=(10, 400)), rng.normal(0.5, 1.0, size=(10, 400))
    real = [_row(f, 10 + i, rng) for i, f in enumerate(real_f)]
    fake = [_row(f, 12, rng) for f in fake_f]
    for r in fake:
        r["temporal_flickering"] = 0.5
    m, params = reduce_metrics(ev, real, fake)
    assert m["vbench/temporal_flickering"] == 0.5
    assert m["real/vbench/temporal_flickering"] == pytest.approx(
        np.mean([r["temporal_flickering"] for r in real])
    )
    for key, column in (("proxy/motion_smoothness_farneback", "motion_smoothness"),
                        ("proxy/dynamic_degree_farneback", "dynamic"),
                        ("proxy/subject_consistency_i3d", "subject_consistency_i3d")):  # fmt: skip
        assert m[key] == pytest.approx(np.mean([r[column] for r in fake]))
        assert m[f"real/{key}"] == pytest.approx(np.mean([r[column] for r in real]))
    a, b = gaussian_from_features(real_f[:5]), gaussian_from_features(real_f[5:])
    assert m["fvd5_10f/real_floor"] == pytest.approx(frechet_distance(a.mean, a.cov, b.mean, b.cov))
    g, s = gaussian_from_features(real_f), gaussian_from_features(real_f * 0.1)
    assert m["fvd10_10f/static"] == pytest.approx(frechet_distance(g.mean, g.cov, s.mean, s.cov))
    assert m["real/length/mean"] == 14.5 and m["length/mean_generated"] == 12
    assert m["real/length/wasserstein"] == pytest.approx(5.0)  # 10..14 against 15..19
    assert params["vbench.measured"] == "temporal_flickering"
    assert params["proxy.dynamic_degree.stride"] == 1 and params["eval.fps"] == "unknown"
    rows = {k: ref for k, _, ref in side_by_side(m)}
    assert rows["fvd10_10f"].startswith("fvd10_10f/static=") and "real_floor" in rows["fvd10_10f"]
    assert rows["vbench/temporal_flickering"].startswith("real/vbench/temporal_flickering=")
    assert "real/length/mean" in rows["length/mean_generated"]
    # the sentences a person reads pair each score with the same score on the real clips;
    # the length law's real point is its two-halves floor, said as such
    from flowception.eval.console import compare_with_reference

    said = "\n".join(compare_with_reference(m))
    assert "temporal_flickering: generated 0.5 vs real" in said
    assert "wasserstein: generated" not in said and "mean: generated" not in said
    assert (
        "Wasserstein 3.10 frames (two halves of the real clips: 5.00)" in said
    )  # all 12 vs 10..19
    # the means' sampling error: sd of 10..19 over sqrt(10), the generated 12s add none
    assert m["length/mean_difference_se"] == pytest.approx(np.std(range(10, 20), ddof=1) / 10**0.5)
    assert "14.50 in the data (-17.2%, standard error of the difference 6.6%)" in said


def test_vbench_dimensions_reach_the_job_with_their_sha256(tmp_path):
    """``vbench_weights`` wires the real DINO dimension into FeatureActor and the reduce."""
    from safetensors.torch import save_file

    from flowception.eval.config import EvalConfig
    from flowception.eval.generate import FeatureActor
    from flowception.eval.job import _vbench_params, reduce_metrics
    from flowception.eval.vbench import DinoViT

    weights = tmp_path / "dino.safetensors"
    torch.manual_seed(0)
    save_file(DinoViT(dim=64, depth=1).state_dict(), str(weights))
    ev = EvalConfig.from_dict({"detector": "i3d.pt", "metrics": ["length"],
                               "vbench_weights": {"subject_consistency": str(weights)}})  # fmt: skip
    actor = FeatureActor(ev, role="fake")
    rng = np.random.default_rng(2)
    videos = [rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8) for t in (4, 6, 1)]
    out = actor({"key": np.array(["a", "b", "c"], dtype=object), "video": videos})
    assert list(out["vbench_subject_consistency_pairs"]) == [3, 5, 0]
    rows = [{k: v[i] for k, v in out.items()} for i in range(3)]
    static = np.repeat(videos[0][:1], 4, axis=0)
    srow = {k: v[0] for k, v in actor({"key": np.array(["s"], dtype=object),
                                       "video": [static]}).items()}  # fmt: skip
    m, params = reduce_metrics(ev, [srow], rows)
    expected = (out["vbench_subject_consistency_sum"][:2].sum()) / 8
    assert m["vbench/subject_consistency"] == pytest.approx(expected)
    assert m["real/vbench/subject_consistency"] == pytest.approx(1.0)
    assert params["vbench.measured"] == "subject_consistency"
    p = _vbench_params(ev)
    import hashlib

    assert (
        p["vbench.subject_consistency.sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    with pytest.raises(FileNotFoundError, match="eval.vbench_weights.subject_consistency="):
        _vbench_params(ev.replace(vbench_weights={"subject_consistency": str(tmp_path / "x")}))


def test_eval_config_errors_name_the_key(tmp_path):
    from flowception.eval.job import load_job_config

    with pytest.raises(ValueError, match=r"unknown key 'num_vidoes'"):
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
    """Directions from the explicit table (time_per_step_s: lower; unknown: no best), the
    data column beside each metric, every metric plotted (paged), runs named by their
    experiment and parent although both eval children share one run name."""
    from mlflow.tracking import MlflowClient

    from flowception.eval.compare import compare_runs, direction

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("compare-test")
    ids = []
    for name, fvd in (("run-a", [30.0, 20.0, 25.0]), ("run-b", [40.0, 35.0, 33.0])):
        parent = client.create_run(exp, run_name=name).info.run_id
        rid = client.create_run(exp, run_name="eval-step_0000300",
                                tags={"mlflow.parentRunId": parent}).info.run_id  # fmt: skip
        for step, value in zip((100, 200, 300), fvd):
            client.log_metric(rid, "fvd64_16f", value, step=step)
            client.log_metric(rid, "fvd64_16f/static", 50.0, step=step)
            client.log_metric(rid, "fvd32_16f/real_floor", 5.0, step=step)
            client.log_metric(rid, "vbench/temporal_flickering", value / 100, step=step)
            client.log_metric(rid, "real/vbench/temporal_flickering", 0.97, step=step)
            client.log_metric(rid, "time_per_step_s", value / 10, step=step)
            client.log_metric(rid, "my/unknown", value, step=step)
            for i in range(8):
                client.log_metric(rid, f"diag/extra_{i}", value, step=step)
        ids.append(rid)
    table, png = compare_runs(ids, tracking_uri=mlflow_server, out_dir=tmp_path)
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert "compare-test/run-a/eval-step_0000300 final" in rows["metric"]
    assert "compare-test/run-b/eval-step_0000300 final" in rows["metric"]
    assert "| ↓ | 25 | 20 | real_floor 5, static 50 | 33 | 33 |" in rows["fvd64_16f"]
    assert "| ↑ | 0.25 | 0.3 | 0.97 |" in rows["vbench/temporal_flickering"]
    assert "| ↓ | 2.5 | 2 |" in rows["time_per_step_s"]  # lower is better
    assert "| ? | 25 | - | - |" in rows["my/unknown"]  # unknown direction: no best
    assert "| · | 50 | - |" in rows["fvd64_16f/static"]  # a reference point has no best
    assert len(rows) - 1 == 15 and (tmp_path / "metrics_2.png").exists()  # 15 metrics, 2 pages
    assert png.stat().st_size > 5000 and "metrics_2.png" in table
    for key, want in (("eval/fvd2048r64g_16f_64px", "min"), ("lr", "info"), ("epoch", "info"),
                      ("train_flops", "info"), ("length/mean_generated", "info"),
                      ("eval/fvd64_16f/num_fake", "info"), ("mfu_cpu", "max")):  # fmt: skip
        assert direction(key) == want, key
    with pytest.raises(ValueError, match="ambiguous: compare-test/run-"):
        compare_runs(["eval-step_0000300"], tracking_uri=mlflow_server, out_dir=tmp_path)
    table, _ = compare_runs(["compare-test/run-a"], tracking_uri=mlflow_server, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no-such-run"):
        compare_runs(["no-such-run"], tracking_uri=mlflow_server, out_dir=tmp_path)


def test_compare_reads_each_task_against_its_own_references():
    """A training run holds both evaluations of a step, ``eval/<key>`` (the training task)
    and ``eval/unconditional/<key>``: each is read against its own task's reference points
    and has the direction of its unprefixed name."""
    from flowception.eval.compare import data_reference, direction, split_eval

    final = {"eval/fvd32_10f": 200.0, "eval/fvd32_10f/static": 260.0,
             "eval/length/mean_generated": 13.0, "eval/length/mean_data": 12.5,
             "eval/real/vbench/temporal_flickering": 0.95,
             "eval/unconditional/fvd32_10f": 300.0, "eval/unconditional/fvd32_10f/static": 261.0,
             "eval/unconditional/length/mean_generated": 14.0,
             "eval/unconditional/length/mean_data": 12.6,
             "eval/unconditional/real/vbench/temporal_flickering": 0.97,
             "eval/unconditional/digits/identity_kept": 0.3,  # the demo's (eval.digits)
             "eval/unconditional/real/digits/identity_kept": 0.99}  # fmt: skip
    assert data_reference(final, "eval/fvd32_10f") == "static 260"
    assert data_reference(final, "eval/unconditional/fvd32_10f") == "static 261"
    assert data_reference(final, "eval/unconditional/length/mean_generated") == "12.6"
    assert data_reference(final, "eval/unconditional/vbench/temporal_flickering") == "0.97"
    assert data_reference(final, "eval/vbench/temporal_flickering") == "0.95"
    assert data_reference(final, "eval/unconditional/digits/identity_kept") == "0.99"
    assert split_eval("eval/unconditional/length/wasserstein") == (
        "eval/unconditional/",
        "length/wasserstein",
    )
    assert split_eval("loss") == ("", "loss")
    for key, want in (("eval/unconditional/length/wasserstein", "min"),
                      ("eval/unconditional/fvd32_10f/static", "info"),
                      ("eval/image_to_video/fvd32_10f", "min"),
                      ("eval/unconditional/digits/identity_kept", "max"),
                      ("eval/digits/context_kept", "max"), ("eval/digits/videos", "info")):  # fmt: skip
        assert direction(key) == want, key


def test_feature_actor_real_rows_carry_static_clips_and_scores(i3d_weights):
    """Real rows: I3D of the protocol clip, of the first frame held for the clip's length
    (the static baseline), and the same per-video scores as generated rows; videos shorter
    than the clip are skipped for FVD but still scored."""
    from flowception.eval.config import EvalConfig
    from flowception.eval.generate import FeatureActor
    from flowception.eval.i3d import I3DFeatureExtractor
    from flowception.eval.metrics import temporal_flickering

    ev = EvalConfig.from_dict({"detector": str(i3d_weights), "device": "cpu",
                               "protocol": {"num_frames": 10, "resolution": 64}})  # fmt: skip
    actor = FeatureActor(ev, role="real")
    rng = np.random.default_rng(3)
    videos = [rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8) for t in (12, 10, 6)]
    out = actor({"key": np.array(["a", "b", "c"], dtype=object), "video": videos})
    assert list(out["has_clip"]) == [True, True, False]
    ex = I3DFeatureExtractor(i3d_weights, size=64)
    held = np.stack([np.repeat(v[:1], 10, axis=0) for v in videos[:2]])  # (2, 10, H, W, C)
    np.testing.assert_allclose(out["static_features"][:2], ex.features(held), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        out["features"][1], ex.features(videos[1][None])[0], rtol=1e-4, atol=1e-3
    )
    assert np.isnan(out["features"][2]).all() and np.isnan(out["static_features"][2]).all()
    assert out["temporal_flickering"][2] == pytest.approx(temporal_flickering(videos[2]))
    assert np.isfinite(out["subject_consistency_i3d"][:2]).all()
    assert np.isfinite(out["dynamic"]).all() and np.isfinite(out["motion_smoothness"]).all()
    cached = FeatureActor(ev, role="real", fvd_features=False)({"key": np.array(["a"], dtype=object),
                                                                 "video": videos[:1]})  # fmt: skip
    assert np.isnan(cached["features"]).all() and np.isfinite(cached["temporal_flickering"]).all()
