"""The config tree: recipes load, round-trip, overrides apply, bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flowception.cluster.config import TrainConfig, load_config
from flowception.config import apply_overrides

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load_and_round_trip(path):
    cfg = load_config(path)
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.hash() == cfg.hash()
    # config.yaml in checkpoints is the same tree
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_required_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"demo-cpu.yaml", "moving-mnist.yaml", "gpu-2x8.yaml"} <= names
    gpu = load_config(ROOT / "configs/gpu-2x8.yaml")
    assert gpu.cluster.use_gpu and gpu.cluster.num_workers == 16
    assert gpu.deepspeed.zero_stage == 2 and gpu.deepspeed.precision == "bf16"
    assert gpu.cluster.storage_path.startswith("s3://") and gpu.data.shards.startswith("s3://")


def test_overrides_apply_with_types():
    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        [
            "optim.lr=3e-4",
            "cluster.num_workers=4",
            "model.size=s-64",
            "steps=7",
            "method.method=full_sequence",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    budget = load_config(ROOT / "configs/demo-cpu.yaml", ["data.frame_budget=2.56e2"])
    assert budget.data.frame_budget == 256
    assert cfg.cluster.num_workers == 4
    assert (cfg.model.width, cfg.model.depth) == (64, 4)
    assert cfg.model.frame_size == (32, 32)  # the recipe's other model fields are kept
    assert cfg.steps == 7 and cfg.method.method == "full_sequence"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nope.x=1", "unknown key 'nope.x'"),
        ("optim.lr=-1", "OptimConfig.lr=-1.0"),
        ("optim.lr=fast", "OptimConfig.lr='fast'"),
        ("data.frame_budget=2.5", "DataConfig.frame_budget=2.5: input should be a valid integer"),
        ("cluster.use_gpu=maybe", "ClusterConfig.use_gpu='maybe'"),
        ("cluster.storage_path=5", "ClusterConfig.storage_path=5"),
        ("cluster.name=../escape", "ClusterConfig.name='../escape'"),
        ("data.decode_workers=true", "DataConfig.decode_workers=True"),
        ("checkpoint.every_steps=1.5", "CheckpointConfig.every_steps=1.5"),
        ("deepspeed.zero_stage=4", "DeepSpeedConfig.zero_stage=4"),
        ("method.method=diffusion", "MethodConfig.method='diffusion'"),
        ("cluster.num_workers=0", "ClusterConfig.num_workers=0"),
        ("data.size=16", "model.frame_size=(32, 32)"),
        ("deepspeed.precision=bf16", "deepspeed.precision='bf16'"),
        ("steps=0", "TrainConfig.steps=0"),
        ("optim.lr", "expected key.path=value"),
        ("optim.lr.x=1", "optim.lr is not a section"),
    ],
)
def test_bad_overrides_name_key_and_value(override, message):
    with pytest.raises(ValueError, match=None) as info:
        load_config(ROOT / "configs/demo-cpu.yaml", [override])
    assert message in str(info.value)


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 3\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(recipe)
    recipe.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(recipe)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_hash_tracks_what_is_trained_only():
    base = load_config(ROOT / "configs/demo-cpu.yaml")
    assert (
        load_config(ROOT / "configs/demo-cpu.yaml", ["cluster.num_workers=1"]).hash() == base.hash()
    )
    assert (
        load_config(ROOT / "configs/demo-cpu.yaml", ["tracking.enabled=false"]).hash()
        == base.hash()
    )
    assert load_config(ROOT / "configs/demo-cpu.yaml", ["optim.lr=0.5"]).hash() != base.hash()
    assert load_config(ROOT / "configs/demo-cpu.yaml", ["seed=1"]).hash() != base.hash()
    # Throughput and storage knobs keep the run's identity (a resubmission resumes it).
    for knob in ("data.decode_workers=3", "data.storage_retries=9", "deepspeed.zero_stage=1",
                 "data.s3_endpoint_url=http://127.0.0.1:9", "model.attention_backend=dense"):  # fmt: skip
        assert load_config(ROOT / "configs/demo-cpu.yaml", [knob]).hash() == base.hash(), knob
    assert load_config(ROOT / "configs/demo-cpu.yaml", ["data.num_frames=6"]).hash() != base.hash()


def test_flat_params_and_overrides_do_not_mutate_input():
    raw = {"optim": {"lr": 0.1}}
    out = apply_overrides(raw, ["optim.lr=0.2"])
    assert raw == {"optim": {"lr": 0.1}} and out["optim"]["lr"] == 0.2
    flat = load_config(ROOT / "configs/demo-cpu.yaml").flat()
    assert flat["optim.lr"] == pytest.approx(1e-3) and flat["deepspeed.zero_stage"] == 2
    assert all("." in k or k in ("steps", "seed") for k in flat)


def test_deploy_manifests_submit_a_valid_config():
    import shlex

    job = yaml.safe_load((ROOT / "deploy/rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "flowception.eval.cli", "train"]
    cfg = load_config(ROOT / argv[4], argv[5:])
    assert cfg.cluster.storage_path.startswith("s3://") and cfg.cluster.num_workers == 16
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert workers["replicas"] * int(gpus) == cfg.cluster.num_workers
    launcher = yaml.safe_load((ROOT / "deploy/ray-cluster.yaml").read_text())
    assert launcher["available_node_types"]["gpu_8x"]["min_workers"] == 2
    assert "AWS_SECRET_ACCESS_KEY=" not in (ROOT / "deploy/rayjob.yaml").read_text().replace(
        "--from-literal=AWS_SECRET_ACCESS_KEY=...", ""
    )


def test_launch_makes_local_paths_absolute(tmp_path, monkeypatch):
    from flowception.cluster.launch import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        ["data.shards=data/x", "cluster.storage_path=runs", "checkpoint.resume_from=s3://b/run"],
    )
    fixed = absolute_paths(cfg)
    assert fixed.data.shards == str(tmp_path / "data/x")
    assert fixed.cluster.storage_path == str(tmp_path / "runs")
    assert fixed.checkpoint.resume_from == "s3://b/run"
