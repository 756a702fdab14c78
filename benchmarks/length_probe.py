"""Is a demo model's length bias the network's or the sampler's discretisation?

    python benchmarks/length_probe.py outputs/demo --steps 16 32 --videos 96 \\
        --out benchmarks/results/length_probe.json

Loads a ``make demo`` folder's exported EMA model and draws, for each sampler setting
(``--steps`` x ``--insertion``), ``--videos`` unconditional videos and one image-to-video
video from the first frame of every test clip, with the same seed, and counts their
frames (no decoding). Prints, per setting and task, the mean generated length, its
standard error and its difference from the mean length of the demo's training clips
(decoded by ``pipelines.vae_train.shard_videos``, as the autoencoder's training reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowception.cluster.checkpoint import load_inference_model
from flowception.eval.demo import locate
from flowception.model.generate import generate
from flowception.pipelines.latents import VaeCodec
from flowception.pipelines.vae_train import shard_videos


def clips(folder: str) -> list[np.ndarray]:
    """Every decodable clip of a demo shard folder (``pipelines.vae_train.shard_videos``);
    says how many rows it skipped and why."""
    videos, counts = shard_videos(folder, size=32, channels=1)
    skipped = {k: n for k, n in counts.items() if k != "ok"}
    if skipped:
        print(f"{folder}: skipped {sum(skipped.values())} rows {skipped}", file=sys.stderr)
    return videos


def latent_run(folder: str):
    """``(net, cfg, vae, data)`` of a latent demo folder: its exported EMA model and
    config, its autoencoder and its ``data/moving_mnist_*`` folder."""
    try:
        export, data = locate(folder)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    torch.set_num_threads(2)
    net, cfg = load_inference_model(export)
    if not cfg.data.vae_dir:
        raise SystemExit(f"{export}: the probe reads latent demo runs (no data.vae_dir)")
    return net, cfg, VaeCodec(cfg.data.vae, str(cfg.data.vae_dir), "cpu"), data


def save(rows: dict, out: str | None) -> None:
    """Write a probe's table as JSON (``--out``), when asked."""
    if out:
        Path(out).write_text(json.dumps(rows, indent=1) + "\n")


def stats(lengths: list[int], data_mean: float, cap: int) -> dict:
    x = np.asarray(lengths, dtype=float)
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    return {
        "videos": len(x),
        "mean": round(float(x.mean()), 3),
        "se": round(se, 3),
        "vs_data_pct": round(100 * (float(x.mean()) / data_mean - 1), 2),
        "at_cap": int((x >= cap).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a make demo output folder (runs/*/export, data/)")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32])
    p.add_argument("--insertion", nargs="+", default=["bernoulli"])
    p.add_argument("--videos", type=int, default=96, help="unconditional videos per setting")
    p.add_argument("--batch", type=int, default=48, help="videos per sampler call")
    p.add_argument("--out", help="JSON file for the table")
    args = p.parse_args(argv)
    net, cfg, vae, data = latent_run(args.folder)
    train_len = [len(c) for c in clips(str(data / "train"))]
    test = clips(str(data / "test"))
    data_mean = float(np.mean(train_len))
    ctx = [torch.from_numpy(vae.encode(c[:1])) for c in test]
    rows = {"data": {"train_clips": len(train_len), "train_mean": round(data_mean, 3),
                     "test_mean": round(float(np.mean([len(c) for c in test])), 3)}}  # fmt: skip
    print(json.dumps(rows["data"]))
    for ins in args.insertion:
        for k in args.steps:
            method = cfg.method.replace(insertion=ins, num_steps=k)
            key = f"{ins}/K={k}"
            t0 = time.perf_counter()
            got: dict[str, list[int]] = {"image_to_video": [], "unconditional": []}
            g = torch.Generator().manual_seed(0)
            for i in range(0, len(ctx), args.batch):
                part = ctx[i : i + args.batch]
                out = generate(net, method=method.replace(task="image_to_video"),
                               num_videos=len(part), generator=g, context=part)  # fmt: skip
                got["image_to_video"] += [int(v.shape[0]) for v in out.videos]
            for i in range(0, args.videos, args.batch):
                n = min(args.batch, args.videos - i)
                out = generate(net, method=method.replace(task="unconditional"),
                               num_videos=n, generator=g)  # fmt: skip
                got["unconditional"] += [int(v.shape[0]) for v in out.videos]
            rows[key] = {t: stats(v, data_mean, method.max_frames) for t, v in got.items()}
            rows[key]["seconds"] = round(time.perf_counter() - t0, 1)
            print(key, json.dumps(rows[key]), flush=True)
    save(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
