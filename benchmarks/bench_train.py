"""Training benchmark: the 2-worker CPU run (Ray Train + DeepSpeed over gloo) per ZeRO
stage, and Flowception against the full-sequence baseline on the same data.

    python benchmarks/bench_train.py            # writes benchmarks/results/train.json
    python benchmarks/bench_train.py --quick    # fewer steps

Each configuration is one real ``cluster.launch`` run on a local Ray (``num_cpus=2``,
0.5 CPU per worker) over Moving MNIST shards (32x32, 8 frames, 4 clips per batch,
tiny DiT). Throughput is rank 0's last logging window (the steps after warm-up and
the first data fetch): optimiser steps/s and visible tokens/s summed over both ranks
(Flowception trains on the visible frames only, the baseline on all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("flowception", 0),
    ("flowception", 1),
    ("flowception", 2),
    ("flowception", 3),
    ("full_sequence", 2),
]


def run_case(method: str, stage: int, shards: str, storage: str, steps: int) -> dict:
    """One training run; returns its throughput figures."""
    from flowception.cluster.config import load_config
    from flowception.cluster.launch import launch

    window = steps // 3
    cfg = load_config(
        ROOT / "configs/demo-cpu.yaml",
        [
            f"data.shards={shards}",
            "data.num_frames=8",
            "data.frame_budget=32",
            "data.max_batch_size=4",
            "data.epochs=20",
            f"steps={steps}",
            f"method.method={method}",
            f"deepspeed.zero_stage={stage}",
            f"checkpoint.every_steps={steps}",
            "checkpoint.export=false",
            "tracking.enabled=false",
            f"tracking.log_every={window}",
            "cluster.cpus_per_worker=0.5",
            f"cluster.storage_path={storage}",
            f"cluster.name={method}-zero{stage}",
        ],
    )
    t0 = time.perf_counter()
    result = launch(cfg)
    m = result.metrics
    return {
        "method": method,
        "zero_stage": stage,
        "steps": steps,
        "window_steps": window,
        "steps_per_s": m["steps_per_s"],
        "visible_tokens_per_s": m["visible_tokens_per_s"],
        "visible_fraction": m["visible_fraction"],
        "loss": m["loss"],
        "fit_seconds": result.seconds,
        "wall_seconds": time.perf_counter() - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per case")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (15 if args.quick else 30)

    from flowception.pipelines.ray_session import ray_session
    from flowception.pipelines.sources import moving_mnist, write_clips

    with tempfile.TemporaryDirectory() as tmp:
        shards = f"{tmp}/shards"
        write_clips(
            moving_mnist(64, size=32, min_frames=8, max_frames=8, seed=0), shards, max_samples=4
        )
        with ray_session(2, address="local"):
            rows = [run_case(m, s, shards, f"{tmp}/runs", steps) for m, s in CASES]
    out = {
        "benchmark": "train",
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "setup": "2 Ray Train workers x 0.5 CPU, gloo, fp32, tiny DiT, 32x32x8 clips, 4 clips/batch",
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=1))
    print(f"{'method':<14}{'ZeRO':>5}{'steps/s':>10}{'vis tok/s':>12}{'vis frac':>10}{'fit s':>8}")
    for r in rows:
        print(
            f"{r['method']:<14}{r['zero_stage']:>5}{r['steps_per_s']:>10.2f}"
            f"{r['visible_tokens_per_s']:>12.0f}{r['visible_fraction']:>10.2f}{r['fit_seconds']:>8.1f}"
        )
    print(f"wrote {RESULTS / 'train.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
