"""``mfu_cpu`` of the demo model's training step alone: no Ray, no DeepSpeed, no data reader.

    python benchmarks/step_probe.py                              # 1 thread, 64 frames: one demo worker
    python benchmarks/step_probe.py --threads 2 --frame-budget 128
    python benchmarks/step_probe.py --compile                    # torch.compile (inductor) first
    python benchmarks/step_probe.py --world 2                    # 2 ranks, gradients all-reduced
    python benchmarks/step_probe.py --world 2 --ray              # the same ranks as Ray Train workers
    python benchmarks/step_probe.py --world 2 --ray --zero 2     # ... through the DeepSpeed engine

The model and the training law are ``configs/demo-latent-cpu.yaml``'s (its DiT at
patch 2 on 8x8x4 latents, image-to-video with unconditional rows); the clips are random
latents of 10-16 frames packed to ``--frame-budget`` frames a step, as a Ray Train worker's
batches are. Each step is forward, the losses, backward and AdamW; the first ``--warmup``
steps are not timed. ``mfu_cpu`` is the step's training FLOPs per second
(``model.flops.training_flops``) over the best of three fp32 GEMM rates with the same
threads (``model.flops.gemm_rate``), as the train loop logs it; the median and the best
step are reported. Run two at once (``&``) to see what two workers on two cores get
without Ray; ``--world 2`` runs two ranks that all-reduce their gradients over gloo each
step (one flat buffer, as DeepSpeed's reduction does; its time is in the step), still
without Ray, DeepSpeed or the reader; ``--ray`` runs those ranks as the demo's Ray Train
workers (``TorchTrainer`` on the demo's local head of 2 CPUs, ``cluster.cpus_per_worker`` a
worker, gloo), still
without DeepSpeed or the reader; ``--zero STAGE`` steps through the training loop's DeepSpeed
engine instead (``cluster.deepspeed_config``: its AdamW, ZeRO stage ``STAGE`` over gloo, gradient
clipping), still without the reader. Each line also has the median milliseconds of the step's
forward (with the losses), backward (with DeepSpeed's gradient reduction) and optimiser parts.
Prints one line (a line a rank) and, with ``--out``,
writes it as JSON (rank 0's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_recipe beside it


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (a demo worker: 1)")
    p.add_argument("--frame-budget", type=int, default=64, help="frames a step (the demo: 64)")
    p.add_argument("--steps", type=int, default=40, help="steps, warm-up included")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT first")
    p.add_argument("--config", default=str(ROOT / "configs/demo-latent-cpu.yaml"))
    p.add_argument("--world", type=int, default=1, help="ranks all-reducing gradients (gloo)")
    p.add_argument("--ray", action="store_true", help="ranks as Ray Train workers")
    p.add_argument("--zero", type=int, default=None, help="DeepSpeed engine at this ZeRO stage")
    p.add_argument("--out", help="JSON file for the result")
    args = p.parse_args(argv)
    if args.ray:
        return in_ray_train(args)
    if args.world == 1:
        return probe(0, args)
    import torch.multiprocessing as mp

    mp.spawn(probe, args=(args,), nprocs=args.world)
    return 0


def in_ray_train(args: argparse.Namespace) -> int:
    """``args.world`` ranks of ``probe`` as Ray Train workers, sized as the demo's."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from flowception.cluster.config import load_config
    from flowception.pipelines.ray_session import ray_session

    cpus = load_config(args.config, []).cluster.cpus_per_worker
    with ray_session(2, address="local"):  # a local head as the demo's (stage 3)
        TorchTrainer(
            lambda config: probe(ray.train.get_context().get_world_rank(), config["args"]),
            train_loop_config={"args": args},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=args.world, resources_per_worker={"CPU": cpus}
            ),
            run_config=ray.train.RunConfig(
                storage_path="/tmp/step_probe_ray",  # demo_recipe (the packing) importable
                worker_runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
            ),
        ).fit()
    return 0


def probe(rank: int, args: argparse.Namespace) -> int:
    """One rank's timed steps (``args.world`` ranks: gradients all-reduced each step)."""

    import numpy as np
    import torch
    from demo_recipe import batch

    from flowception.cluster.config import load_config
    from flowception.model.dit import DiT
    from flowception.model.flops import gemm_rate, training_flops
    from flowception.model.schedule import mean_insertion_target
    from flowception.model.training import training_step

    torch.set_num_threads(args.threads)
    import torch.distributed as dist

    if not args.ray and (args.world > 1 or args.zero is not None):  # Ray Train sets it up
        os.environ["LOCAL_RANK"] = str(rank)  # DeepSpeed asks for it (one machine)
        dist.init_process_group(
            "gloo", init_method="tcp://127.0.0.1:29561", rank=rank, world_size=args.world
        )
    zero = [] if args.zero is None else [f"deepspeed.zero_stage={args.zero}"]
    cfg = load_config(args.config, zero)
    torch.manual_seed(0)
    net = DiT(cfg.model, rate_init=mean_insertion_target(cfg.data.num_frames, cfg.method))
    model = torch.compile(net, dynamic=True) if args.compile else net
    if args.zero is None:
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr)
        backward, update = partial(plain_backward, net, opt, args.world), opt.step
    else:
        import deepspeed

        from flowception.cluster.deepspeed_config import deepspeed_config, skip_unused_ops

        skip_unused_ops()
        model, *_ = deepspeed.initialize(
            model=model,
            model_parameters=list(net.parameters()),
            config=deepspeed_config(cfg, world_size=args.world, use_gpu=False),
            dist_init_required=False,
        )
        backward, update = model.backward, model.step
    rng, gen = np.random.default_rng(rank), torch.Generator().manual_seed(rank)
    c, (h, w) = cfg.model.in_channels, cfg.model.frame_size
    pool = [torch.randn(int(rng.integers(10, 17)), c, h, w) * 0.5 for _ in range(64)]

    rates, steps_s, first, parts = [], [], 0.0, []
    for i in range(args.steps):
        x, lengths = batch(pool, args.frame_budget, rng)  # the sweep's packing, (B, F, C, H, W)
        t0 = time.perf_counter()
        out = training_step(model, x, lengths, method=cfg.method, generator=gen)
        t1 = time.perf_counter()
        backward(out.loss.total)
        t2 = time.perf_counter()
        update()
        t3 = time.perf_counter()
        dt = t3 - t0
        first = dt if i == 0 else first
        if i >= args.warmup:
            rates.append(training_flops(out.index.cu_seqlens, cfg.model)["total"] / dt)
            steps_s.append(1.0 / dt)
            parts.append((t1 - t0, t2 - t1, t3 - t2))
    if args.world > 1:
        dist.barrier()  # the ranks time their GEMMs together, as the train loop's do
    gemm = max(gemm_rate(seconds=0.3) for _ in range(3))
    row = {
        "rank": rank, "world": args.world, "threads": args.threads, "frame_budget": args.frame_budget, "compile": args.compile,
        "ray": args.ray, "zero": args.zero, "first_step_s": first, "steps_per_s_median": statistics.median(steps_s),
        **{f"{k}_ms_median": 1000 * statistics.median(p[j] for p in parts)
           for j, k in enumerate(("forward", "backward", "optimiser"))},
        "step_flops_per_s_median": statistics.median(rates), "gemm_flops_per_s": gemm,
        "mfu_cpu_median": statistics.median(rates) / gemm, "mfu_cpu_best": max(rates) / gemm,
    }  # fmt: skip
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.out and rank == 0:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    return 0


def plain_backward(net: Any, opt: Any, world: int, loss: Any) -> None:
    """Backward; with ``world`` ranks, the gradients all-reduced as one flat buffer."""
    import torch
    import torch.distributed as dist

    opt.zero_grad(set_to_none=True)
    loss.backward()
    if world > 1:
        grads = [q.grad for q in net.parameters() if q.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        for g, v in zip(grads, torch.split(flat, [g.numel() for g in grads])):
            g.copy_(v.view_as(g).div_(world))


if __name__ == "__main__":
    raise SystemExit(main())
