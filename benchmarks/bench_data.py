"""Decoded clips per second: the Ray Data reader vs ``webdataset.WebDataset`` + DataLoader.

Both readers decode the same shards with the same code (``pipelines.decode``: PyAV,
clip plan, centre crop + resize) and hand uint8 clips to the consumer; they differ
only in how shards are read and work is spread. Each is run with 1 and 2 workers
(Ray: concurrent read+decode tasks of one rank's deterministic reader, as a training
worker runs it; DataLoader: worker processes), on local disk and on a local S3
endpoint (moto), after one warm-up pass. Every reader must deliver every good clip
(checked), so a fast wrong reader cannot win. Ray Data and WebDataset passes are
interleaved in pairs (one right after the other, order alternating): a pass on a shared
VM varies by more between minutes than the readers differ, so the ratios reported are
the median over pairs of the two passes' times, with every pair's ratio in the JSON.

Where the Ray reader's time goes comes from Ray Data's own stats (``ds.stats()`` of
the fastest timed pass): task wall time summed over tasks vs the pass's wall time x
workers (``busy``: how well the workers are used), the consumer's time blocked in
``iter_batches`` (``blocked``), and the mean block (rows, MB). The ``where`` column
and ``findings`` in the JSON say what that means.

    python benchmarks/bench_data.py --videos 1536 --repeats 4   # ~12 min on an idle 2-core machine
    python benchmarks/bench_data.py --quick            # 192 videos, 1 timed pair

Writes ``benchmarks/results/data.json`` (with the raw ``ds.stats()`` text) and prints a
table. Numbers taken when the load average before the run is above the core count are
marked ``loaded`` (the load after includes the benchmark's own processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowception.pipelines.config import DataConfig  # noqa: E402
from flowception.pipelines.dataset import decode_rows, read_shard_rows  # noqa: E402
from flowception.pipelines.s3_local import local_s3, use_dummy_credentials  # noqa: E402
from flowception.pipelines.shards import Storage, list_shards  # noqa: E402
from flowception.pipelines.sources import moving_mnist, write_clips  # noqa: E402

# --------------------------------------------------------------------------- #
#                                   Readers                                   #
# --------------------------------------------------------------------------- #


LAST_STATS: dict[str, str] = {}


def run_ray(cfg: DataConfig) -> int:
    """Decoded clips delivered by the Ray Data reader (one pass, one rank of one, blocks
    as the training stream takes them); keeps ``ds.stats()`` in ``LAST_STATS``."""
    from flowception.pipelines.dataset import build_dataset

    clips, waited, t0 = 0, 0.0, time.perf_counter()
    ds = build_dataset(cfg)
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - t
        if batch is None:
            break
        clips += int((batch["status"] == "ok").sum())
    LAST_STATS["text"] = ds.stats()
    LAST_STATS["blocked"] = f"{waited / (time.perf_counter() - t0):.3f}"
    return clips


def _seconds(text: str) -> float:
    m = re.match(r"([\d.]+)\s*(\w+)", text)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}.get(m.group(2), 1)


def where_time_goes(stats: str, seconds: float, workers: int, blocked: str = "") -> dict:
    """The numbers of ``ds.stats()`` that explain a pass: task wall time over the
    workers' time (``busy``), task CPU time over task wall time (``cpu``: below 1 the
    tasks wait for a CPU or for storage), the consumer's share of the pass spent
    waiting for the next block (``blocked``, timed around ``next()``), and the mean block."""
    out: dict = {}
    wall = sum(
        _seconds(w) for w in re.findall(r"Remote wall time: .*?, ([\d.]+\s*\w+) total", stats)
    )
    cpu = sum(_seconds(c) for c in re.findall(r"Remote cpu time: .*?, ([\d.]+\s*\w+) total", stats))
    if wall:
        out["busy"] = round(wall / (seconds * workers), 2)
        out["cpu"] = round(cpu / wall, 2)
    if blocked:
        out["blocked"] = round(float(blocked), 2)
    rows = re.search(r"Output num rows per block: .*?, ([\d.]+) mean", stats)
    size = re.search(r"Output size bytes per block: .*?, ([\d.]+)\s*(\w*?)B? mean", stats)
    if rows:
        out["rows_per_block"] = float(rows.group(1))
    if size:
        scale = {"": 1, "K": 1e3, "Ki": 1024, "M": 1e6, "Mi": 1 << 20}.get(size.group(2), 1)
        out["mb_per_block"] = round(float(size.group(1)) * scale / 1e6, 2)
    out["operators"] = len(re.findall(r"^Operator \d+ ", stats, flags=re.M))
    return out


def finding(w: dict) -> str:
    """One line: what bounds the pass, from ``where_time_goes``."""
    if not w:
        return "no stats"
    if w.get("cpu", 1) < 0.7:
        return "tasks wait for a CPU or storage (cpu/wall low): loaded machine or slow GETs"
    if w.get("busy", 0) >= 0.8:
        return "decode-bound: tasks busy on CPU, framework overhead small"
    if w.get("blocked", 1) < 0.5:
        return "consumer-bound: the driver-side loop is the bottleneck"
    return "workers idle while the consumer waits: scheduling/ordering overhead"


_S3: dict[int, object] = {}


def _s3_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    import s3fs

    pid = os.getpid()  # one client per DataLoader worker process (not shared across fork)
    if pid not in _S3:
        _S3[pid] = s3fs.S3FileSystem(
            endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True
        )
    return _S3[pid].open(url[len("s3://") :], "rb")


def _wds_decode(sample: dict, cfg: DataConfig) -> dict:
    """The same per-sample work as the Ray reader: json check, clip plan, decode, resize."""
    import numpy as np

    from flowception.pipelines import schema
    from flowception.pipelines.decode import DecodeError, centre_crop_resize, decode_mp4
    from flowception.pipelines.samples import plan_clip, sample_rng

    try:
        meta = schema.parse_meta(sample["json"])
        plan = plan_clip(
            meta.num_frames,
            max_frames=cfg.num_frames,
            min_frames=cfg.min_frames,
            stride=cfg.frame_stride,
            random_start=cfg.clip_start == "random",
            rng=sample_rng(cfg.seed, 0, sample["__key__"]),
        )
        if plan is None:
            return {"key": sample["__key__"], "video": None}
        clip = decode_mp4(
            sample["mp4"], channels=cfg.channels, start=plan[0], max_frames=plan[1]
        )  # (T, H, W, C)
        return {"key": sample["__key__"], "video": centre_crop_resize(clip, cfg.size)}
    except (ValueError, KeyError, DecodeError):
        return {"key": sample["__key__"], "video": np.zeros((0,))}


def run_webdataset(cfg: DataConfig, workers: int) -> int:
    """Decoded clips delivered by ``webdataset.WebDataset`` + ``DataLoader`` (one pass)."""
    from functools import partial

    import torch
    import webdataset as wds

    # webdataset has no s3:// opener; register one (inherited by forked DataLoader workers)
    sys.modules["webdataset.gopen"].gopen_schemes["s3"] = _s3_open
    urls = [s.url for s in list_shards(cfg.shards, Storage.from_config(cfg))]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(
        partial(_wds_decode, cfg=cfg)
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, collate_fn=lambda x: x
    )
    return sum(1 for s in loader if s["video"] is not None and len(s["video"]))


def run_plain(cfg: DataConfig) -> int:
    """Single process, no framework: the decode cost itself (reference)."""
    clips = 0
    for i, shard in enumerate(list_shards(cfg.shards, Storage.from_config(cfg))):
        rows = decode_rows(read_shard_rows(cfg, shard.url, 0, i), cfg)
        clips += int((rows["status"] == "ok").sum())
    return clips


REPEATS = 2


def timed(fn, *args) -> tuple[int, float]:
    """Clips of one pass and the best time of ``REPEATS`` passes after a warm-up pass
    (imports, page cache); used for the plain loop, which has no reader to pair with.
    """
    fn(*args)
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        clips = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return clips, best


def bench_config(shards: str, size: int, units_per_task: int) -> DataConfig:
    """The data config every reader of this benchmark decodes with (16-frame clips)."""
    return DataConfig(
        shards=shards, size=size, num_frames=16, frame_budget=256, units_per_task=units_per_task
    )


def write_bench_clips(videos: int, size: int, per_shard: int, out: str, **kw) -> list:
    """``videos`` Moving MNIST videos of 8-20 frames written as shards under ``out``."""
    clips = list(moving_mnist(videos, size=size, min_frames=8, max_frames=20))
    write_clips(clips, out, max_samples=per_shard, **kw)
    return clips


def check(fn, args, clips: int) -> None:
    if EXPECTED and clips != EXPECTED[0]:
        raise AssertionError(f"{fn.__name__}{args[1:]}: {clips} clips, expected {EXPECTED[0]}")


def paired(ray_args: tuple, wds_args: tuple) -> tuple[list[float], list[float], dict]:
    """Ray Data and WebDataset passes interleaved, ``REPEATS`` pairs after a warm-up of each:
    pair ``r`` runs one reader right after the other (order alternating), so the pair's
    ratio sees the same machine; a pass on this shared VM varies by up to 1.4x between
    minutes, more than the readers differ. Returns both readers' times and the
    ``ds.stats()`` of the fastest Ray pass."""
    run_ray(*ray_args), run_webdataset(*wds_args)
    t_ray, t_wds, stats = [], [], {}
    for r in range(REPEATS):
        order = (("ray", run_ray, ray_args), ("wds", run_webdataset, wds_args))
        for name, fn, args in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            clips = fn(*args)
            took = time.perf_counter() - t0
            check(fn, args, clips)
            if name == "ray":
                if not t_ray or took < min(t_ray):
                    stats = dict(LAST_STATS)
                t_ray.append(took)
            else:
                t_wds.append(took)
    return t_ray, t_wds, stats


EXPECTED: list[int] = []


# --------------------------------------------------------------------------- #
#                                    Main                                     #
# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=768)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    parser.add_argument(
        "--quick", action="store_true", help="192 videos, 1 timed pair (make bench --quick)"
    )
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help="timed pairs of passes per setting"
    )
    parser.add_argument(
        "--units-per-task", type=int, default=DataConfig().units_per_task,
        help="shards per Ray read task (data.units_per_task)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    globals()["REPEATS"] = args.repeats
    if args.quick:
        args.videos = min(args.videos, 192)
        globals()["REPEATS"] = args.repeats = 1

    import ray

    use_dummy_credentials()
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp, local_s3() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        local = f"{tmp}/shards"
        print(f"writing {args.videos} Moving MNIST videos ({args.size}px, 8-20 frames)...")
        clips = write_bench_clips(args.videos, args.size, args.per_shard, local)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
        write_clips(
            clips, "s3://bench/shards", max_samples=args.per_shard, storage=Storage(endpoint)
        )
        ray.init(num_cpus=max(args.workers), include_dashboard=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        base = bench_config(local, args.size, args.units_per_task)
        for storage, where in (("local", local), ("s3", "s3://bench/shards")):
            cfg = base.replace(shards=where, s3_endpoint_url=endpoint)
            if storage == "local":
                n, sec = timed(run_plain, cfg)
                EXPECTED[:] = [n]
                results.append(
                    dict(reader="plain", storage=storage, workers=1, clips=n, seconds=sec)
                )
            for w in args.workers:
                t_ray, t_wds, stats = paired((cfg.replace(decode_workers=w),), (cfg, w))
                n = EXPECTED[0]
                where = where_time_goes(
                    stats.get("text", ""), min(t_ray), w, stats.get("blocked", "")
                )
                results.append(
                    dict(
                        reader="ray", storage=storage, workers=w, clips=n, seconds=min(t_ray),
                        passes=t_ray, where=where, finding=finding(where), stats=stats.get("text", ""),
                    )
                )  # fmt: skip
                results.append(
                    dict(reader="webdataset", storage=storage, workers=w, clips=n,
                         seconds=min(t_wds), passes=t_wds)
                )  # fmt: skip
        ray.shutdown()

    for r in results:
        r["clips_per_s"] = round(r["clips"] / r["seconds"], 1)
        if "passes" in r:
            r["median_clips_per_s"] = round(r["clips"] / statistics.median(r["passes"]), 1)
            r["passes"] = [round(x, 3) for x in r["passes"]]
        r["seconds"] = round(r["seconds"], 3)
    by = {(r["reader"], r["storage"], r["workers"]): r for r in results}
    ratios: dict[str, object] = {}
    for s in ("local", "s3"):
        for w in args.workers:
            pairs = [
                wt / rt
                for rt, wt in zip(by[("ray", s, w)]["passes"], by[("webdataset", s, w)]["passes"])
            ]
            ratios[f"ray_over_webdataset_{s}_{w}w"] = round(statistics.median(pairs), 3)
            ratios[f"ray_over_webdataset_{s}_{w}w_pairs"] = [round(x, 3) for x in pairs]
    if len(args.workers) > 1:
        lo, hi = min(args.workers), max(args.workers)
        for reader in ("ray", "webdataset"):
            for s in ("local", "s3"):
                ratios[f"{reader}_scaling_{s}_{lo}to{hi}w"] = round(
                    by[(reader, s, hi)]["median_clips_per_s"]
                    / by[(reader, s, lo)]["median_clips_per_s"],
                    3,
                )
    load_after = os.getloadavg()[0]
    # the load after includes this benchmark's own 2-3 busy processes: judge by the load before
    loaded = load_before > (os.cpu_count() or 1)
    report = {
        "benchmark": "data",
        "videos": args.videos,
        "frame_size": args.size,
        "per_shard": args.per_shard,
        "units_per_task": args.units_per_task,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "loaded": loaded,
        "note": (
            "LOADED machine: rates are not comparable, re-measure on an idle machine"
            if loaded
            else "idle machine (load average before the run below the core count)"
        ),
        "results": results,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

    print(
        f"\n{'reader':<11}{'storage':<8}{'workers':>8}{'clips':>7}{'s':>8}{'clips/s':>9}"
        f"{'median':>8}  where the time goes (ds.stats)"
    )
    for r in results:
        w = r.get("where") or {}
        where = (
            f"  busy {w.get('busy', '?')}, cpu {w.get('cpu', '?')}, "
            f"blocked {w.get('blocked', '?')}, "
            f"{w.get('rows_per_block', '?')} rows/block, {w.get('operators', '?')} op: "
            f"{r['finding']}"
            if r["reader"] == "ray"
            else ""
        )
        print(
            f"{r['reader']:<11}{r['storage']:<8}{r['workers']:>8}{r['clips']:>7}"
            f"{r['seconds']:>8.2f}{r['clips_per_s']:>9.1f}{r.get('median_clips_per_s', ''):>8}{where}"
        )
    if loaded:
        print(f"LOADED (load average {load_before:.1f} -> {load_after:.1f}): re-measure idle")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
