"""CPU that Ray Data's executor thread burns while a slow consumer (a training step)
holds the queued batches, with and without ``pipelines.loop_pace.LoopPace``.

    python benchmarks/loop_pace.py --shards outputs/demo/data/moving_mnist_1digit/latents/train --step-s 0.3

Reads ``build_dataset(cfg)`` of ``--shards`` (pixel or latent) in one process, takes a
batch of ``--batch`` rows, sleeps ``--step-s`` (the stand-in for a training step) and
repeats for ``--batches`` batches; the executor thread's CPU seconds come from
``/proc/self/task/<tid>/stat``. Writes ``benchmarks/results/loop_pace.json`` and ``loop_pace.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def args_vae_dir(shards: str) -> str:
    """The VAE directory latent shards were encoded with (their ``index.json`` meta)."""
    meta = json.loads((Path(shards) / "index.json").read_text())["meta"]
    return meta["vae"]["dir"]


def run(shards: str, paced: bool, batches: int, batch: int, step_s: float) -> dict:
    from flowception.pipelines import loop_pace
    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import build_dataset, latent_set
    from flowception.pipelines.loop_pace import thread_cpu_seconds

    cfg = DataConfig(shards=shards, size=32, channels=1, num_frames=16, epochs=20)
    latent = latent_set(cfg)
    if latent is not None:
        cfg = cfg.replace(vae="image", vae_dir=args_vae_dir(shards))
    ds = build_dataset(cfg, latent=latent)
    if not paced:
        ds.context.custom_execution_callback_classes = [
            c for c in ds.context.custom_execution_callback_classes if c is not loop_pace.LoopPace
        ]
    it = iter(ds.iter_batches(batch_size=batch, batch_format="numpy"))
    next(it)  # the executor thread exists from here on
    cpu0, t0, n = thread_cpu_seconds(), time.perf_counter(), 0
    for _ in range(batches):
        time.sleep(step_s)
        next(it)
        n += 1
    wall = time.perf_counter() - t0
    cpu = thread_cpu_seconds() - cpu0
    return {"loop_pace": paced, "batches": n, "wall_s": round(wall, 2),
            "executor_cpu_s": round(cpu, 2), "executor_core_share": round(cpu / wall, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="pixel or latent shards")
    p.add_argument("--batches", type=int, default=30, help="batches taken")
    p.add_argument("--batch", type=int, default=4, help="rows a batch")
    p.add_argument("--step-s", type=float, default=0.3, help="seconds between batches")
    p.add_argument("--out", default=str(RESULTS / "loop_pace.json"))
    args = p.parse_args(argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [
        run(args.shards, paced, args.batches, args.batch, args.step_s) for paced in (False, True)
    ]
    record = {"args": vars(args), "rows": rows, "load_avg": os.getloadavg()}
    Path(args.out).write_text(json.dumps(record, indent=1))
    lines = ["| LoopPace | batches | wall s | executor thread CPU s | share of a core |",
             "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {'on' if r['loop_pace'] else 'off'} | {r['batches']} | {r['wall_s']} | "
              f"{r['executor_cpu_s']} | {r['executor_core_share']} |" for r in rows]  # fmt: skip
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
