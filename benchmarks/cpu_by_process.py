"""CPU seconds by process during 2-worker passes of the Ray Data and WebDataset readers.

    python benchmarks/cpu_by_process.py              # 768 videos, 2 passes of each reader

Reads every process's ``utime + stime`` from ``/proc/<pid>/stat`` before and after each
pass (after a warm-up pass), and the machine's ``/proc/stat`` (user, nice, system, idle,
steal), so a pass's CPU time can be split between the read tasks, the consumer and Ray's
own processes (raylet, GCS, agents). WebDataset's DataLoader workers are forked per pass
and gone when it ends, so its rows show the consumer and the idle time only. Linux only;
prints a table per pass (README "Benchmarks", data).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data as bd  # noqa: E402

from flowception.pipelines.config import DataConfig  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def processes() -> dict[int, tuple[float, str]]:
    """``pid -> (cpu seconds, command)`` of every live process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            rest = stat[stat.rindex(")") + 2 :].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
            out[int(pid)] = ((int(rest[11]) + int(rest[12])) / HZ, cmd[:80] or stat.split()[1])
        except (OSError, ValueError, IndexError):  # the process ended while we read it
            pass
    return out


def machine() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]


def one_pass(name: str, fn, *args) -> None:
    before, m0, t0 = processes(), machine(), time.perf_counter()
    clips = fn(*args)
    wall = time.perf_counter() - t0
    after, m1 = processes(), machine()
    rows = sorted(
        ((cpu - before.get(pid, (0.0, ""))[0], pid, cmd) for pid, (cpu, cmd) in after.items()),
        reverse=True,
    )
    rows = [r for r in rows if r[0] >= 0.02]
    ticks = {f: (b - a) / HZ for f, a, b in zip(FIELDS, m0, m1)}
    print(f"\n[{name}] {clips} clips in {wall:.2f} s ({clips / wall:.1f}/s); "
          f"{(os.cpu_count() or 1) * wall:.2f} CPU-s available; machine: "
          + ", ".join(f"{f} {v:.2f}" for f, v in ticks.items() if v))  # fmt: skip
    for cpu, pid, cmd in rows[:10]:
        print(f"  {cpu:6.2f} s  {pid:>8}  {cmd}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=768)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--units-per-task", type=int, default=DataConfig().units_per_task)
    args = p.parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/shards"
        bd.write_bench_clips(args.videos, 64, 32, local)  # bench_data's defaults
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cfg = bd.bench_config(local, 64, args.units_per_task)
        readers = (
            ("ray, 2 read tasks", bd.run_ray, (cfg.replace(decode_workers=2),)),
            ("webdataset, 2 DataLoader workers", bd.run_webdataset, (cfg, 2)),
        )
        for name, fn, fn_args in readers:
            fn(*fn_args)  # warm-up
            for _ in range(args.passes):
                one_pass(name, fn, *fn_args)
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
