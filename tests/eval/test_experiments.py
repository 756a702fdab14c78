"""``flowception experiment``: recipes, generation lengths and every experiment end to end.

The end-to-end tests run each experiment at a tiny size on the session's real Ray,
MLflow server and converted I3D (protocol at 64 px, 10-frame clips), and check the
parent / child MLflow structure, the table rows, the PNG and that numbers are finite.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from flowception.eval.experiments import EXPERIMENTS
from flowception.eval.experiments.config import load_experiment
from flowception.eval.experiments.runner import ROLE_TAG, markdown_table

# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_recipe_loads_default_and_quick(name):
    full = load_experiment(name)
    quick = load_experiment(name, quick=True)
    assert full.name == quick.name == name and quick.quick and not full.quick
    if name in ("baselines", "insertion-order", "local-attention"):
        assert quick.steps < full.steps and quick.eval_videos <= full.eval_videos


def test_overrides_and_errors():
    cfg = load_experiment("baselines", overrides=["steps=7", "arms=[flowception]", "eval=[a=1]"])
    assert (cfg.steps, cfg.arms, cfg.eval) == (7, ("flowception",), ("a=1",))
    with pytest.raises(ValueError, match="unknown key"):
        load_experiment("cost", overrides=["stepz=3"])
    with pytest.raises(ValueError, match="unknown experiment"):
        load_experiment("nope")
    with pytest.raises(ValueError, match="steps"):
        load_experiment("cost", overrides=["steps=0"])
    with pytest.raises(ValueError, match="unknown arm"):
        load_experiment("baselines", overrides=["arms=[gan]"]).pick_arms(("flowception",))


def test_markdown_table_columns_and_nan():
    text = markdown_table([{"a": 1, "b": float("nan")}, {"a": 2.5, "c": "x"}])
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[2] == "| 1 | n/a |  |"


# ------------------------------------------------------------- generation lengths (E25)


def _tiny_checkpoint(tmp_path: Path, method: str) -> Path:
    """An exported tiny model (untrained weights) with its config, as eval loads it."""
    import yaml
    from safetensors.torch import save_file

    from flowception.cluster.config import load_config
    from flowception.model.dit import DiT

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "demo-cpu.yaml", [f"method.method={method}",
                      "model.frame_size=[8,8]", "data.size=8", "method.max_frames=12"])  # fmt: skip
    out = tmp_path / "export"
    out.mkdir()
    net = DiT(cfg.model)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    for name in ("model.safetensors", "ema.safetensors"):
        save_file(state, str(out / name))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return out


@pytest.mark.parametrize("rule", ["left_to_right", "hierarchical", "random"])
def test_generation_actor_reveals_each_rows_length(tmp_path, rule):
    """A prescribed order generates exactly the row's real length ``L*`` (spec E25)."""
    from flowception.eval.generate import GenerationActor

    ckpt = _tiny_checkpoint(tmp_path, "flowception")
    actor = GenerationActor(str(ckpt), method_overrides={"task": "unconditional",
                            "insertion_rule": rule, "num_steps": 4}, device="cpu")  # fmt: skip
    lengths = np.asarray([3, 7, 20])  # 20 > max_frames: capped at 12
    batch = {"key": np.asarray(["a", "b", "c"], dtype=object), "label": np.full(3, -1),
             "context": np.empty(3, dtype=object), "length": lengths}  # fmt: skip
    for i in range(3):
        batch["context"][i] = np.zeros((0, 8, 8, 1), np.uint8)
    out = actor(batch)
    assert out["length"].tolist() == [3, 7, 12]
    with pytest.raises(ValueError, match="length"):
        actor({k: v for k, v in batch.items() if k != "length"})


def test_generation_actor_baseline_data_lengths(tmp_path):
    from flowception.eval.generate import GenerationActor

    ckpt = _tiny_checkpoint(tmp_path, "full_sequence")
    batch = {"key": np.asarray(["a", "b"], dtype=object), "label": np.full(2, -1),
             "context": np.empty(2, dtype=object), "length": np.asarray([5, 9])}  # fmt: skip
    for i in range(2):
        batch["context"][i] = np.zeros((1, 8, 8, 1), np.uint8)
    kw = {"method_overrides": {"task": "image_to_video", "num_steps": 2}, "device": "cpu"}
    fixed = GenerationActor(str(ckpt), **kw)(batch)
    given = GenerationActor(str(ckpt), data_lengths=True, **kw)(batch)
    assert fixed["length"].tolist() == [16, 16]  # method.num_frames
    assert given["length"].tolist() == [5, 9]


def test_conditioning_row_carries_length():
    from flowception.eval.job import _conditioning

    row = {"key": "k", "label": 3, "video": np.zeros((11, 4, 4, 1), np.uint8)}
    out = _conditioning(row, 1)
    assert out["length"] == 11 and out["context"].shape == (1, 4, 4, 1)


# ------------------------------------------------------------------------ end to end

TINY = ["train_videos=24", "test_videos=8", "eval_videos=4", "sample_steps=3", "steps=8",
        "eval=[eval.protocol.resolution=64,eval.batch_size=4]"]  # fmt: skip


@pytest.fixture(scope="module")
def out_root(tmp_path_factory) -> Path:
    """One root for the module: the Moving MNIST shards are made once and reused."""
    return tmp_path_factory.mktemp("experiments")


def _run(name: str, out_root: Path, uri: str, i3d: Path, extra: list[str]):
    from flowception.eval.experiments.runner import run_experiment

    cfg = load_experiment(name, overrides=[f"out={out_root}", f"tracking_uri={uri}",
                                           f"detector={i3d}", *TINY, *extra])  # fmt: skip
    return run_experiment(cfg)


def _subject_or_said_why(result) -> None:
    """Subject consistency is finite, or the results say why not: at these tiny sizes an arm
    can generate videos shorter than the I3D protocol's clip, which is left out, not padded."""
    notes = (result.folder / "results.md").read_text()
    for row in result.rows:
        assert math.isfinite(row["subject"]) or "FVD left empty" in notes, row


def _check(result, uri: str, arms: list[str], numeric: list[str]) -> list[dict]:
    """Parent + one child per arm in MLflow, artifacts, table rows, finite numbers."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[ROLE_TAG] == "parent"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    by_role = [c for c in children if c.data.tags.get(ROLE_TAG) == "arm"]
    assert sorted(c.data.tags["flowception.arm"] for c in by_role) == sorted(arms)
    assert all(c.data.metrics for c in by_role)
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"results.md", "results.csv", "plot.png", "summary.json"} <= artifacts
    assert (result.folder / "plot.png").stat().st_size > 5000
    with open(result.folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.rows)
    for row in result.rows:
        for key in numeric:
            assert math.isfinite(float(row[key])), (key, row)
    return rows


@pytest.mark.slow
def test_schedule_end_to_end(out_root, mlflow_server):
    res = _run("schedule", out_root, mlflow_server, Path("unused"), ["draws=2000", "lengths=[16]"])
    _check(res, mlflow_server, ["bounded", "bounded_logit_normal", "uniform02"],
           ["e22_att", "e22_att_pred", "e23_att", "e23_tok", "max_vis_gap"][:4])  # fmt: skip
    bounded = res.rows[0]
    assert abs(bounded["e22_att"] - bounded["e22_att_pred"]) < 0.03  # E22 exact for the lengths
    assert bounded["max_vis_gap"] < 0.1  # visible fraction follows kappa(tau_g) = tau_g
    assert "L=16" in res.rows[-1]["law"]


@pytest.mark.slow
def test_cost_end_to_end(out_root, mlflow_server):
    res = _run("cost", out_root, mlflow_server, Path("unused"),
               ["lengths=[8,12]", "videos=2", "repeats=1", "train=[model.depth=1]"])  # fmt: skip
    rows = _check(
        res,
        mlflow_server,
        ["L=8", "L=12"],
        ["att_eq_eval", "tok_eq_eval", "att_eq_step", "flow_s", "fsK_s", "flow_gflops"],
    )
    assert [r["L"] for r in rows] == ["8", "12"]
    assert "(1 blocks, width" in (res.folder / "results.md").read_text()  # train_config's model
    for row in res.rows:  # equal step size costs exactly twice the equal-evaluation ratio
        assert row["att_eq_step"] == pytest.approx(2 * row["att_eq_eval"])
        assert 0.3 < row["att_eq_eval"] < 1.0


@pytest.fixture(scope="module")
def local_attention(out_root, mlflow_server, ray_local, i3d_weights):
    """The local-attention experiment at tiny size; its full-attention Flowception run is
    also the model of the insertion-order test (one training less in CI)."""
    return _run("local-attention", out_root, mlflow_server, i3d_weights,
                ["arms=[flowception:1,flowception:full]"])  # fmt: skip


@pytest.mark.slow
def test_local_attention_end_to_end(local_attention, mlflow_server):
    res = local_attention
    _check(res, mlflow_server, ["flowception:1", "flowception:full"],
           ["train_s", "time_per_step_s", "len_gen", "d_len_w1"])  # fmt: skip
    _subject_or_said_why(res)
    assert [r["window"] for r in res.rows] == ["1", "full"]
    assert res.rows[1]["d_len_w1"] == 0.0
    assert res.rows[1]["d_subject"] == 0.0 or math.isnan(res.rows[1]["subject"])
    assert all(r["fvd_non_standard"] for r in res.rows)


@pytest.mark.slow
def test_baselines_end_to_end(out_root, mlflow_server, ray_local, i3d_weights):
    res = _run("baselines", out_root, mlflow_server, i3d_weights, ["arms=[autoregressive_causal]"])
    _check(res, mlflow_server, ["autoregressive_causal"],
           ["train_s", "time_per_step_s", "subject", "len_gen", "len_w1"])  # fmt: skip
    row = res.rows[0]
    assert row["len_gen"] == pytest.approx(row["len_data"])  # data_lengths: the real lengths
    assert row["fvd_non_standard"] and row["fvd_clips"].startswith("4+")


@pytest.mark.slow
def test_insertion_order_end_to_end(local_attention, out_root, mlflow_server, i3d_weights):
    ckpt = local_attention.folder / "runs" / "flowception-full-8-s0"
    res = _run("insertion-order", out_root, mlflow_server, i3d_weights,
               ["arms=[learned,hierarchical]", f"checkpoint={ckpt}"])  # fmt: skip
    _check(res, mlflow_server, ["learned", "hierarchical"], ["len_gen", "len_data"])
    _subject_or_said_why(res)
    hier = res.rows[1]
    assert hier["len_gen"] == pytest.approx(hier["len_data"])  # E25 reveals exactly L*
