"""``flowception data ...``: make and check video shards.

Runbook (from the repository root, inside ``.venv``)::

    # Moving MNIST, 64x64, lengths 8..20 frames (the demo data), train and test
    flowception data make-shards moving-mnist --out data/moving_mnist/train --split train --num-videos 2000
    flowception data make-shards moving-mnist --out data/moving_mnist/test --split test --num-videos 200

    # fixed-length, small, into S3 (endpoint from --s3-endpoint or AWS_ENDPOINT_URL,
    # credentials from the usual AWS_* variables)
    flowception data make-shards moving-mnist --out s3://bucket/mnist32/train \\
        --size 32 --min-frames 16 --max-frames 16 --num-videos 500

    # any folder of videos: 16-frame windows every 8 frames, every 2nd frame, 64x64
    flowception data make-shards folder --folder ~/videos --out data/videos \\
        --window 16 --stride 8 --step 2 --size 64

    # latent shards for training in a VAE's latent space (docs/latents.md); re-run to resume.
    # A toy VAE for CPU runs (random weights, nothing downloaded; configs/latent-cpu.yaml):
    flowception data make-vae image --out data/vae/tiny-image
    # or one trained on the shards' frames (minutes on CPU; what `make demo` uses):
    flowception data train-vae --shards data/moving_mnist/train --out data/vae/mm --steps 1500
    flowception data encode --shards data/moving_mnist/train --out data/mm-latents/train \\
        --vae data/vae/tiny-image --vae-kind image

    # count samples and bad ones by reason (no Ray; decodes every sample)
    flowception data check --shards data/moving_mnist/train --size 64 --channels 1

Shards are ``shard-000000.tar`` ... plus ``index.json`` (sample counts, sizes,
sha256); ``--max-shard-mb`` / ``--max-samples`` bound each shard.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``data make-shards``, ``check``, ``encode``, ``make-vae`` and ``train-vae`` to
    ``flowception``."""
    data = subparsers.add_parser("data", help="make and check video shards (local or s3://)")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    make = sub.add_parser("make-shards", help="write WebDataset video shards + index.json")
    make.add_argument(
        "source",
        choices=["moving-mnist", "folder"],
        help="what to write: Moving MNIST (real MNIST digits) or a folder of videos",
    )
    make.add_argument("--out", required=True, help="directory or s3://bucket/prefix")
    make.add_argument("--size", type=int, default=64, help="frame side H = W")
    make.add_argument("--max-shard-mb", type=float, default=64.0, help="shard size cap in MB")
    make.add_argument("--max-samples", type=int, default=1000, help="samples per shard at most")
    make.add_argument("--s3-endpoint", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    mnist = make.add_argument_group("moving-mnist")
    mnist.add_argument(
        "--split",
        choices=["train", "test"],
        default="train",
        help="MNIST split the digits come from",
    )
    mnist.add_argument("--num-videos", type=int, default=1000, help="videos to write")
    mnist.add_argument("--min-frames", type=int, default=8, help="shortest video")
    mnist.add_argument("--max-frames", type=int, default=20, help="longest video")
    mnist.add_argument("--digits", type=int, default=2, help="moving digits per video")
    mnist.add_argument(
        "--speed", type=float, default=None,
        help="digit speed in px/frame (default: a sixteenth of the room, 1.125 at --size 32)",
    )  # fmt: skip
    mnist.add_argument(
        "--glyphs", type=int, default=None,
        help="both splits draw digits from N train digit images, one class after another "
        "(10: one of each class; default: all of the split's)",
    )  # fmt: skip
    mnist.add_argument("--fps", type=float, default=10.0, help="frame rate stored in the MP4s")
    mnist.add_argument("--seed", type=int, default=0, help="seed of digits, paths and lengths")
    folder = make.add_argument_group("folder")
    folder.add_argument("--folder", help="directory of videos (searched recursively)")
    folder.add_argument("--window", type=int, default=16, help="frames per clip")
    folder.add_argument("--stride", type=int, default=16, help="frames between clip starts")
    folder.add_argument("--step", type=int, default=1, help="temporal step inside a clip")
    make.set_defaults(func=make_shards)

    check = sub.add_parser(
        "check",
        help="count samples and bad samples by reason, and the clip lengths (the law a model learns)",
    )
    check.add_argument("--shards", required=True, help="directory or s3://bucket/prefix")
    check.add_argument("--size", type=int, default=64, help="frame side the reader resizes to")
    check.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1 grayscale, 3 RGB")
    check.add_argument("--num-frames", type=int, default=16, help="frames per clip at most")
    check.add_argument("--min-frames", type=int, default=2, help="shorter clips count as too_short")
    check.add_argument("--s3-endpoint", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    check.set_defaults(func=check_shards)

    enc = sub.add_parser(
        "encode", help="pixel shards -> VAE latent shards (Ray actor pool; resumable)"
    )
    enc.add_argument(
        "--shards", required=True, help="pixel shards: directory or s3://bucket/prefix"
    )
    enc.add_argument("--out", required=True, help="latent shards: directory or s3://bucket/prefix")
    enc.add_argument("--vae", required=True, help="local directory of a diffusers VAE")
    enc.add_argument(
        "--vae-kind", choices=["image", "video"], default="image",
        help="image: AutoencoderKL per frame; video: AutoencoderKLLTXVideo (temporal compression)",
    )  # fmt: skip
    enc.add_argument("--size", type=int, default=None, help="frame side (default: index.json's)")
    enc.add_argument("--max-frames", type=int, default=256, help="video frames encoded per sample")
    enc.add_argument("--actors", type=int, default=None, help="VAE actors (default: GPUs, else 1)")
    enc.add_argument("--s3-endpoint", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    enc.set_defaults(func=encode_shards)

    toy = sub.add_parser("make-vae", help="a tiny random-weight diffusers VAE (tests, CPU recipes)")
    toy.add_argument("kind", choices=["image", "video"], help="AutoencoderKL or LTX video VAE")
    toy.add_argument("--out", required=True, help="local directory (save_pretrained layout)")
    toy.add_argument("--channels", type=int, choices=[1, 3], default=1, help="pixel channels")
    toy.set_defaults(func=make_vae)

    from flowception.pipelines.vae_train import VaeRecipe

    recipe = VaeRecipe()  # the defaults below are the recipe's
    tv = sub.add_parser(
        "train-vae", help="train a small image VAE (AutoencoderKL) on pixel shards' frames"
    )
    tv.add_argument("--shards", required=True, help="pixel shards: directory or s3://bucket/prefix")
    tv.add_argument("--out", required=True, help="local directory (save_pretrained layout)")
    tv.add_argument("--size", type=int, default=None, help="frame side (default: index.json's)")
    tv.add_argument("--channels", type=int, choices=[1, 3], default=1, help="pixel channels")
    tv.add_argument("--steps", type=int, default=recipe.steps, help="optimiser steps")
    tv.add_argument("--batch-size", type=int, default=recipe.batch_size, help="frames per step")
    tv.add_argument("--lr", type=float, default=recipe.lr, help="peak learning rate (cosine)")
    tv.add_argument(
        "--block-channels", type=int, nargs="+", default=list(recipe.block_out_channels),
        help="channels per encoder block; each block after the first halves the side",
    )  # fmt: skip
    tv.add_argument(
        "--latent-channels", type=int, default=recipe.latent_channels, help="latent channels"
    )
    tv.add_argument(
        "--shift-weight", type=float, default=recipe.shift_weight,
        help="weight of the loss that makes the latent move with sub-stride moves (0: off)",
    )  # fmt: skip
    tv.add_argument("--seed", type=int, default=recipe.seed, help="initialisation and batch order")
    tv.add_argument("--s3-endpoint", default=None, help="S3 endpoint (else AWS_ENDPOINT_URL)")
    tv.set_defaults(func=train_vae)

    data.set_defaults(func=lambda args: data.print_help() or 2)


def make_shards(args: argparse.Namespace) -> int:
    """``flowception data make-shards``."""
    import os

    from tqdm import tqdm

    from flowception.pipelines import sources
    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.shards import Storage

    storage = Storage.from_config(DataConfig(shards=args.out, s3_endpoint_url=args.s3_endpoint))
    if args.source == "moving-mnist":
        clips = sources.moving_mnist(
            args.num_videos,
            split=args.split,
            size=args.size,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            num_digits=args.digits,
            fps=args.fps,
            seed=args.seed,
            speed=args.speed,
            glyphs=args.glyphs,
        )
        total, meta = args.num_videos, {"source": "moving_mnist", "split": args.split}
        for name in ("speed", "glyphs"):
            if getattr(args, name) is not None:
                meta[name] = getattr(args, name)
    else:
        if not args.folder:
            raise ValueError("make-shards folder: --folder is required")
        clips = sources.folder_clips(
            args.folder, window=args.window, stride=args.stride, step=args.step, size=args.size
        )
        total, meta = None, {"source": "folder", "folder": os.path.abspath(args.folder)}
    meta["size"] = args.size
    with tqdm(total=total, unit="video", desc=f"shards -> {args.out}") as bar:
        index = sources.write_clips(
            clips,
            args.out,
            max_bytes=int(args.max_shard_mb * (1 << 20)),
            max_samples=args.max_samples,
            storage=storage,
            meta=meta,
            on_clip=lambda _: bar.update(1),
        )
    print(f"{index['num_samples']} samples in {len(index['shards'])} shard(s) under {args.out}")
    return 0


def check_shards(args: argparse.Namespace) -> int:
    """``flowception data check``: read every shard in-process (pixel or latent shards, as
    ``index.json`` says), compare it with ``index.json`` (bytes, sha256, sample count),
    print counts by status.

    Exits 1 when no sample is usable or a shard differs from its index entry.
    """
    from tqdm import tqdm

    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import latent_set, read_task, shard_list

    cfg = DataConfig(
        shards=args.shards,
        size=args.size,
        channels=args.channels,
        num_frames=args.num_frames,
        min_frames=args.min_frames,
        frame_budget=max(256, args.num_frames),
        s3_endpoint_url=args.s3_endpoint,
        shuffle=False,
    )
    counts: Counter = Counter()
    problems: list[str] = []
    frames: list[int] = []  # of each usable clip, as the reader gives it (at most --num-frames)
    shards = shard_list(cfg)
    latent = latent_set(cfg)  # latent shards (index.json's meta) hold .npy, not MP4s
    if latent is not None:
        print(f"latent shards: {latent.latent_channels} x {latent.latent_size[0]} x "
              f"{latent.latent_size[1]} per frame ({args.shards})")  # fmt: skip
    for i, shard in enumerate(tqdm(shards, unit="shard")):
        rows = read_task(cfg, shards, (0, i, i, ()), latent)
        counts.update(str(s) for s in rows["status"])
        frames += [len(v) for v, s in zip(rows["video"], rows["status"]) if str(s) == "ok"]
        issues = [x for x in rows["shard_issue"] if x]
        if issues:
            problems.append(
                f"{shard.url}: {issues[0]} (index.json: {shard.bytes} bytes, "
                f"{shard.num_samples} samples, sha256 {shard.sha256})"
            )
    for line in problems:
        print(line)
    for status, n in sorted(counts.items()):
        print(f"{status:>18} {n}")
    if frames:
        print(length_law(frames, "latent frames" if latent is not None else "frames"))
    print(f"{len(shards)} shard(s), {len(problems)} differ from index.json")
    return 0 if counts.get("ok") and not problems else 1


def length_law(frames: list[int], unit: str = "frames") -> str:
    """One line on the clip lengths a model trained on these shards learns (the law a
    Flowception sampler should reproduce): mean, range and the mean's standard error."""
    n = len(frames)
    mean = sum(frames) / n
    var = sum((f - mean) ** 2 for f in frames) / max(n - 1, 1)
    return (f"{unit} per ok clip: mean {mean:.2f} (standard error {(var / n) ** 0.5:.2f}), "
            f"min {min(frames)}, max {max(frames)}, {n} clips")  # fmt: skip


def encode_shards(args: argparse.Namespace) -> int:
    """``flowception data encode``: see ``pipelines.encode``; prints counts by status."""
    from tqdm import tqdm

    from flowception.pipelines.encode import EncodeJob, default_size, run_encode

    size = args.size or default_size(args.shards, args.s3_endpoint)
    if size is None:
        raise ValueError(f"--size: required ({args.shards}/index.json records no frame size)")
    job = EncodeJob(
        src=args.shards, out=args.out, vae_dir=args.vae, vae_kind=args.vae_kind, size=size,
        max_frames=args.max_frames, s3_endpoint=args.s3_endpoint,
    )  # fmt: skip
    with tqdm(unit="shard", desc=f"encode -> {args.out}") as bar:
        result = run_encode(job, actors=args.actors, progress=lambda _: bar.update(1))
    index = result["index"]
    for status, n in sorted(index["meta"]["counts"].items()):
        print(f"{status:>18} {n}")
    meta = index["meta"]
    print(
        f"{index['num_samples']} latent samples in {len(index['shards'])} shard(s) under "
        f"{args.out} ({len(result['encoded'])} encoded now, {len(result['skipped'])} already "
        f"done); latents [T', {meta['latent_channels']}, {meta['latent_size'][0]}, "
        f"{meta['latent_size'][1]}], temporal compression {meta['temporal_compression']}, "
        f"VAE sha256 {meta['vae']['sha256'][:12]}"
    )
    return 0 if index["num_samples"] else 1


def make_vae(args: argparse.Namespace) -> int:
    """``flowception data make-vae``: ``pipelines.latents.save_random_vae``."""
    from flowception.pipelines.latents import save_random_vae, vae_sha256

    path = save_random_vae(args.kind, args.out, in_channels=args.channels)
    print(f"{args.kind} VAE (random weights) in {path}, sha256 {vae_sha256(path)}")
    return 0


def train_vae(args: argparse.Namespace) -> int:
    """``flowception data train-vae``: ``pipelines.vae_train``; prints the reconstruction
    error of the held-out videos against a blank frame."""
    from tqdm import tqdm

    from flowception.pipelines.encode import default_size
    from flowception.pipelines.vae_train import VaeRecipe, shard_videos, train_image_vae

    recipe = VaeRecipe(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        block_out_channels=tuple(args.block_channels), latent_channels=args.latent_channels,
        shift_weight=args.shift_weight, seed=args.seed,
    )  # fmt: skip
    size = args.size or default_size(args.shards, args.s3_endpoint)
    if size is None:
        raise ValueError(f"--size: required ({args.shards}/index.json records no frame size)")
    videos, counts = shard_videos(
        args.shards, size=size, channels=args.channels, s3_endpoint=args.s3_endpoint
    )
    skipped = sum(n for s, n in counts.items() if s != "ok")
    print(f"{len(videos)} video(s) from {args.shards}, {skipped} skipped"
          + "".join(f", {s} {n}" for s, n in sorted(counts.items()) if s != "ok"))  # fmt: skip
    with tqdm(total=recipe.steps, unit="step", desc=f"train-vae -> {args.out}") as bar:
        record = train_image_vae(
            videos, args.out, recipe,
            progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")),
        )  # fmt: skip
    print(
        f"{recipe.steps} steps in {record['seconds']} s; held-out reconstruction mse "
        f"{record['heldout_recon_mse']:.4f} (blank frame {record['heldout_blank_mse']:.4f}) on "
        f"{record['heldout_frames']} frames; latents {record['latent_shape']}; {args.out}"
    )
    return 0
