"""CPU seconds by process while a command runs, counting processes that come and go.

    python benchmarks/cpu_during.py -- python -m pytest -q tests/cluster/test_train_ray.py -k non_finite
    python benchmarks/cpu_during.py --skip 20 --seconds 60 -- flowception mlflow-server --root /tmp/m1
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true \\
        python benchmarks/cpu_during.py --skip 20 --seconds 60 -- flowception mlflow-server --root /tmp/m2

Starts the command in its own process group, waits ``--skip`` seconds (start-up left out),
then reads every process's ``utime + stime`` and title from ``/proc`` each ``--every``
seconds until the command ends or ``--seconds`` have passed (then it is sent SIGINT). A
process counts the CPU it used after the window opened (or after it started) up to its
last reading, under its last title: Ray retitles its workers (``ray::RayTrainWorker``),
and Ray Train's short-lived helper actors are counted too, where ``cpu_by_process.py``'s
before/after reading misses them. A process shorter than one interval is missed. Prints
CPU seconds by title and the machine's split (``/proc/stat``, with the hypervisor's steal).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_by_process import FIELDS, HZ, machine, processes  # noqa: E402


def title(cmd: str) -> str:
    """What rows are grouped by: a Ray worker's ``ray::Class``, else the command's start."""
    first = cmd.split(" ", 1)[0]
    if first.startswith("ray::"):
        return first.split(".", 1)[0]
    words = [w.rsplit("/", 1)[-1] for w in cmd.split()[:4]]
    return " ".join(words)[:70]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip", type=float, default=0.0, help="seconds before the window opens")
    p.add_argument("--seconds", type=float, default=None, help="stop the command after this")
    p.add_argument("--every", type=float, default=0.25, help="sampling interval, seconds")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (put it after --)")
    proc = subprocess.Popen(cmd, start_new_session=True)
    time.sleep(args.skip)
    start, m0, t0 = processes(), machine(), time.perf_counter()
    last: dict[int, tuple[float, str]] = {}
    while proc.poll() is None:
        last.update(processes())
        if args.seconds is not None and time.perf_counter() - t0 >= args.seconds:
            break
        time.sleep(args.every)
    wall, m1 = time.perf_counter() - t0, machine()
    stopped = proc.poll() is None  # --seconds ran out: its exit status is ours to ignore
    if stopped:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    used: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for pid, (cpu, cmd_line) in last.items():
        spent = cpu - start.get(pid, (0.0, ""))[0]
        if spent > 0:
            used[title(cmd_line)] += spent
            count[title(cmd_line)] += 1
    ticks = [b - a for a, b in zip(m0, m1)]
    total = sum(ticks) or 1
    split = ", ".join(f"{f} {t / total:.2f}" for f, t in zip(FIELDS, ticks) if t)
    print(f"window {wall:.1f} s, {(os.cpu_count() or 1) * wall:.1f} CPU-s available; "
          f"processes {sum(used.values()):.1f} CPU-s; machine: {split} (HZ {HZ})")  # fmt: skip
    for name, cpu in sorted(used.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {cpu:8.1f} s  {count[name]:4d}  {name}")
    return 0 if stopped else proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
