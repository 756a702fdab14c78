"""Run in a subprocess by ``test_train_ray``: load a 2-rank ZeRO-2 checkpoint into a
1-rank engine through ``checkpoint.restore_rank`` (universal conversion) and compare the
engine's fp32 master weights and Adam moments with the 2 ranks' partitions, concatenated.

    python universal_probe.py CHECKPOINT_DIR   # prints "OK <numel>" or fails
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from flowception.cluster import checkpoint, safe_io
from flowception.cluster.config import load_config
from flowception.cluster.deepspeed_config import deepspeed_config, skip_unused_ops
from flowception.cluster.lr import lr_scheduler
from flowception.model.dit import DiT
from flowception.model.ema import EMA


def partitions(ds_dir: Path, world: int) -> dict[str, torch.Tensor]:
    """fp32 weights and Adam moments of every rank's partition, concatenated in rank order."""
    out: dict[str, list[torch.Tensor]] = {"fp32": [], "exp_avg": [], "exp_avg_sq": []}
    with safe_io.no_code_loads():
        for r in range(world):
            sd = torch.load(ds_dir / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
            osd = sd["optimizer_state_dict"]
            out["fp32"].append(osd["single_partition_of_fp32_groups"][0])
            state = osd["base_optimizer_state"]["state"][0]
            out["exp_avg"].append(state["exp_avg"])
            out["exp_avg_sq"].append(state["exp_avg_sq"])
    return {k: torch.cat(v) for k, v in out.items()}


def main(ckpt: str) -> int:
    port = os.environ.get("PROBE_PORT", "29571")
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    dist.init_process_group("gloo", rank=0, world_size=1)
    import deepspeed

    local = Path(ckpt)
    cfg = load_config(local / "config.yaml", ["cluster.num_workers=1"])
    net = DiT(cfg.model)
    ds_config = deepspeed_config(cfg, world_size=1, use_gpu=False)
    ds_config["checkpoint"] = {"load_universal": True}
    skip_unused_ops()
    engine, *_ = deepspeed.initialize(
        model=net, model_parameters=list(net.parameters()), config=ds_config,
        lr_scheduler=partial(lr_scheduler, optim=cfg.optim, total_steps=cfg.steps),
        dist_init_required=False,
    )  # fmt: skip
    step, rng, _ = checkpoint.restore_rank(
        engine, ema=EMA(net, cfg.optim.ema_decay), local_dir=local, rank=0, world_size=1
    )
    numel = sum(p.numel() for p in net.parameters())
    want = partitions(local / checkpoint.DS_TAG, 2)
    opt = engine.optimizer
    fp32 = opt.single_partition_of_fp32_groups[0]
    state = opt.optimizer.state[fp32]
    got = {"fp32": fp32.detach(), "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}
    for key in want:
        if not torch.equal(got[key][:numel], want[key][:numel]):
            diff = (got[key][:numel] - want[key][:numel]).abs().max().item()
            print(f"MISMATCH {key}: max |diff| {diff}")
            return 1
    if not (want["exp_avg_sq"][:numel] > 0).any() or engine.global_steps != step:
        print(f"EMPTY or wrong step: global_steps {engine.global_steps}, checkpoint step {step}")
        return 1
    print(f"OK {numel} step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
