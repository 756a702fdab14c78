"""The DeepSpeed JSON builder and the learning-rate schedule (pure functions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flowception.cluster.config import OptimConfig, load_config
from flowception.cluster.deepspeed_config import deepspeed_config
from flowception.cluster.lr import lr_factor

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("world", [1, 2, 16])
def test_batch_sizes_consistent_and_stage(stage, world):
    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        [f"deepspeed.zero_stage={stage}", "optim.grad_accum_steps=3"],
    )
    ds = deepspeed_config(cfg, world_size=world, use_gpu=False)
    json.dumps(ds)  # serialisable
    assert ds["train_batch_size"] == (
        ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    )
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == stage
    assert ("reduce_bucket_size" in ds["zero_optimization"]) == (stage >= 1)


def test_precision_fp32_on_cpu_bf16_on_gpu():
    cfg = load_config(ROOT / "configs/demo-cpu.yaml")
    cpu = deepspeed_config(cfg, world_size=2, use_gpu=False)
    assert not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"]
    gpu = deepspeed_config(cfg, world_size=2, use_gpu=True)
    assert gpu["bf16"]["enabled"]
    forced = load_config(ROOT / "configs/demo-cpu.yaml", ["deepspeed.precision=fp32"])
    assert not deepspeed_config(forced, world_size=2, use_gpu=True)["bf16"]["enabled"]


def test_optimizer_and_clipping_from_config():
    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        ["optim.lr=2e-4", "optim.grad_clip=0.5", "optim.weight_decay=0.01"],
    )
    ds = deepspeed_config(cfg, world_size=2, use_gpu=False)
    assert ds["gradient_clipping"] == 0.5
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and params["torch_adam"]
    assert params["lr"] == pytest.approx(2e-4) and params["weight_decay"] == 0.01


def test_gpu_recipe_json():
    cfg = load_config(ROOT / "configs/gpu-2x8.yaml")
    ds = deepspeed_config(cfg, world_size=16, use_gpu=True)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["overlap_comm"]
    with pytest.raises(ValueError, match="world_size=0"):
        deepspeed_config(cfg, world_size=0, use_gpu=True)


def test_lr_schedule_warmup_then_decay():
    optim = OptimConfig(warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, optim, 110) == pytest.approx(0.1)
    assert lr_factor(9, optim, 110) == pytest.approx(1.0)
    assert lr_factor(60, optim, 110) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_factor(110, optim, 110) == pytest.approx(0.1)
    assert lr_factor(500, optim, 110) == pytest.approx(0.1)
    factors = [lr_factor(s, optim, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    linear = OptimConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert lr_factor(50, linear, 100) == pytest.approx(0.5)
    assert lr_factor(7, OptimConfig(warmup_steps=0, decay="constant"), 100) == 1.0
