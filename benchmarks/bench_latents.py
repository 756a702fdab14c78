"""VAE latents: encode throughput (the Ray ``data encode`` job vs a plain single-process
loop, same shards, same VAE) and training-reader throughput on latent vs pixel shards.

Encode: ``pipelines.encode.run_encode`` (actor pool of ``--actors`` VAE encoders; the
time includes starting the actors, as a user sees it) against ``encode_in_process`` (one
VAE, one loop, no Ray), both from scratch into a fresh ``--out``; both must write every
good clip (checked). Reader: clips/s delivered by the training reader
(``pipelines.dataset.build_dataset``, Ray Data) and by its read task in-process (no Ray:
the cost of read + decode alone) on the pixel shards and on their latent shards, one
warm-up pass first; latents skip video decoding.

The VAE defaults to the tiny random-weight one of the tests (``--vae`` / ``--vae-kind``
for a real one): its encode cost is far below a real VAE's, so the encode numbers measure
the job's overhead more than a GPU's work.

    python benchmarks/bench_latents.py            # ~2-4 min on an idle 2-core machine
    python benchmarks/bench_latents.py --quick    # fewer videos, one timed pass

Writes ``benchmarks/results/latents.json`` and ``latents.md`` (a table). Numbers taken at
a load average above the core count are marked ``loaded`` and must be re-measured idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowception.pipelines.config import DataConfig  # noqa: E402
from flowception.pipelines.dataset import latent_set, read_task, shard_list  # noqa: E402
from flowception.pipelines.encode import EncodeJob, encode_in_process, run_encode  # noqa: E402
from flowception.pipelines.latents import save_random_vae  # noqa: E402
from flowception.pipelines.sources import moving_mnist, write_clips  # noqa: E402


def read_ray(cfg: DataConfig) -> int:
    """Good clips delivered by the Ray Data reader (one pass, one rank of one)."""
    from flowception.pipelines.dataset import build_dataset

    clips = 0
    for batch in build_dataset(cfg).iter_batches(batch_size=None, batch_format="numpy"):
        clips += int((batch["status"] == "ok").sum())
    return clips


def read_plain(cfg: DataConfig) -> int:
    """Good clips from the reader's read task called in a loop (no Ray)."""
    shards, latent = shard_list(cfg), latent_set(cfg)
    clips = 0
    for i in range(len(shards)):
        rows = read_task(cfg, shards, (0, i, i, ()), latent)
        clips += int((rows["status"] == "ok").sum())
    return clips


def timed(fn, *args, repeats: int = 1) -> tuple[int, float]:
    """``(result, best seconds)`` over ``repeats`` calls after one warm-up call."""
    fn(*args)
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--vae", default=None, help="VAE directory (default: a tiny random one)")
    parser.add_argument("--vae-kind", choices=["image", "video"], default="image")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latents.json"))
    args = parser.parse_args(argv)
    n = args.videos or (32 if args.quick else 128)
    repeats = 1 if args.quick else 2

    from flowception.pipelines.ray_session import ray_session

    tmp = Path(tempfile.mkdtemp(prefix="bench-latents-"))
    vae = args.vae or save_random_vae(args.vae_kind, str(tmp / "vae"))
    pixels = tmp / "pixels"
    clips = moving_mnist(n, size=args.size, min_frames=8, max_frames=16, seed=0)
    write_clips(clips, str(pixels), max_samples=max(n // 8, 1), meta={"size": args.size})
    results: list[dict] = []
    with ray_session(2):
        # [1] encode: Ray actor pool vs one plain loop, each from scratch
        for name, fn in (
            ("ray", lambda job: run_encode(job, actors=args.actors)),
            ("plain", encode_in_process),
        ):
            job = EncodeJob(src=str(pixels), out=str(tmp / f"lat-{name}"), vae_dir=vae,
                            vae_kind=args.vae_kind, size=args.size)  # fmt: skip
            t0 = time.perf_counter()
            index = fn(job)["index"]
            dt = time.perf_counter() - t0
            assert index["num_samples"] == n, (name, index["meta"]["counts"])
            results.append({"stage": "encode", "how": name, "actors": args.actors if name == "ray"
                            else 1, "clips": n, "seconds": dt, "clips_per_s": n / dt})  # fmt: skip
        # [2] reader: pixel vs latent shards, Ray Data reader and its task in-process
        common = dict(num_frames=16, min_frames=2, frame_budget=64, clip_start="first",
                      shuffle=False, decode_workers=2)  # fmt: skip
        data = {
            "pixels": DataConfig(shards=str(pixels), size=args.size, channels=1, **common),
            "latents": DataConfig(
                shards=str(tmp / "lat-ray"), vae=args.vae_kind, vae_dir=vae, **common
            ),  # fmt: skip
        }
        for shards, cfg in data.items():
            for how, fn in (("ray", read_ray), ("plain", read_plain)):
                got, dt = timed(fn, cfg, repeats=repeats)
                assert got == n, (shards, how, got)
                results.append({"stage": "read", "how": how, "shards": shards, "clips": n,
                                "seconds": dt, "clips_per_s": n / dt})  # fmt: skip
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    rate = {(r["stage"], r["how"], r.get("shards")): r["clips_per_s"] for r in results}
    summary = {
        "encode_ray_over_plain": rate[("encode", "ray", None)] / rate[("encode", "plain", None)],
        "read_latent_over_pixel_ray": rate[("read", "ray", "latents")]
        / rate[("read", "ray", "pixels")],
        "read_latent_over_pixel_plain": rate[("read", "plain", "latents")]
        / rate[("read", "plain", "pixels")],
    }
    report = {
        "benchmark": "latents",
        "videos": n,
        "frames": "8-16",
        "size": args.size,
        "vae": {"kind": args.vae_kind, "dir": vae if args.vae else "tiny random (tests)"},
        "machine": {"cpus": cores, "platform": platform.platform(), "load_avg_1m": load},
        "loaded": load > cores,
        "results": results,
        "summary": summary,
        "remeasure_idle": [
            "every number when loaded is true (the machine was shared)",
            "encode with a real VAE on GPUs: the tiny VAE measures job overhead, not encode cost",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    flag = " (loaded: re-measure idle)" if report["loaded"] else ""
    lines = [
        f"VAE latents, {n} Moving MNIST videos of 8-16 frames at {args.size}x{args.size}, "
        f"{args.vae_kind} VAE ({report['vae']['dir']}); load {load:.1f} on {cores} cores{flag}",
        "",
        "| stage | shards | how | clips/s | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        how = f"{r['how']} ({r['actors']} actors)" if r["stage"] == "encode" else r["how"]
        lines.append(f"| {r['stage']} | {r.get('shards', 'pixels -> latents')} | {how} | "
                     f"{r['clips_per_s']:.1f} | {r['seconds']:.2f} |")  # fmt: skip
    lines += ["", *(f"- {k}: {v:.2f}x" for k, v in summary.items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
