"""``flowception data encode``: pixel shards -> latent shards, on a Ray actor pool of VAE
encoders (one GPU per actor on GPU clusters, CPU actors otherwise).

    flowception data encode --shards data/moving_mnist/train --out data/mm-latents/train \\
        --vae /models/sd-vae-ft-ema                     # per-frame image VAE (default)
    flowception data encode --shards s3://b/k600/train --out s3://b/k600-ltx/train \\
        --vae /models/ltx-video-vae --vae-kind video --actors 16

Each input shard is one unit of work: an actor reads it (one GET), decodes each sample's
whole video (PyAV; ``--max-frames`` at most, resized to ``--size``), encodes it
(``pipelines.latents.VaeCodec``) and writes the output shard of the *same name* whole
(a local temp file renamed, or one S3 PUT), then ``{name}.done.json`` (sample count,
skips by reason, size, sha256, VAE sha256). Bad samples are skipped and counted with
the reasons of ``flowception data check``. ``index.json`` is written last, from the
done records, and marks the set as latents (``schema.LatentSet``).

Resumable: a restarted job skips every shard whose done record names the same VAE and
whose output shard has the recorded size and sha256; a shard killed half way has no
done record and is encoded again. An ``--out`` holding another VAE's latents is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flowception.pipelines import schema
from flowception.pipelines.config import DataConfig
from flowception.pipelines.dataset import shard_issues, shard_list
from flowception.pipelines.decode import DecodeError, centre_crop_resize, decode_mp4
from flowception.pipelines.latents import VaeCodec, vae_geometry, vae_sha256
from flowception.pipelines.samples import read_samples
from flowception.pipelines.shards import (
    ShardInfo,
    Storage,
    exists,
    join,
    parse_index,
    read_bytes,
    write_bytes,
)

log = logging.getLogger(__name__)
DONE_SUFFIX = ".done.json"


@dataclass(frozen=True)
class EncodeJob:
    """One ``data encode`` run (everything an actor needs, picklable).

    Attributes:
        src: pixel shards (directory or ``s3://``).
        out: where the latent shards go.
        vae_dir: local VAE directory (on every node).
        vae_kind: ``image`` or ``video``.
        size: frame side the videos are resized to before encoding.
        max_frames: video frames encoded per sample at most (the rest is cut).
        s3_endpoint: S3 endpoint (``None``: the environment's).
    """

    src: str
    out: str
    vae_dir: str
    vae_kind: str = "image"
    size: int = 64
    max_frames: int = 256
    s3_endpoint: str | None = None

    def data_config(self, channels: int) -> DataConfig:
        """How the pixel shards are read: whole videos from frame 0, in tar order."""
        return DataConfig(
            shards=self.src, size=self.size, channels=1 if channels == 1 else 3,
            num_frames=self.max_frames, min_frames=1, frame_budget=self.max_frames,
            clip_start="first", shuffle=False, s3_endpoint_url=self.s3_endpoint,
        )  # fmt: skip

    def absolute(self) -> EncodeJob:
        """Local paths made absolute (actors run in other directories)."""

        def fix(path: str) -> str:
            return path if "://" in path else os.path.abspath(os.path.expanduser(path))

        return replace(self, src=fix(self.src), out=fix(self.out), vae_dir=fix(self.vae_dir))

    def storage(self) -> Storage:
        return Storage.from_config(DataConfig(shards=self.out, s3_endpoint_url=self.s3_endpoint))


# --------------------------------------------------------------------------- #
#                                One shard                                    #
# --------------------------------------------------------------------------- #


def encode_shard(job: EncodeJob, codec: VaeCodec, shard: ShardInfo) -> dict[str, Any]:
    """Encode one pixel shard into the latent shard of the same name, then its done record.

    Returns:
        The done record: ``name, num_samples, bytes, sha256, counts, vae_sha256, vae``.
    """
    import tarfile

    channels = 1 if codec.info.in_channels == 1 else 3
    raw = read_bytes(shard.url, Storage.from_config(job.data_config(channels)))
    samples = read_samples(raw)
    counts: Counter = Counter(shard_issues(raw, shard, len(samples)))
    lost = (shard.num_samples or 0) - len(samples)
    if lost > 0:  # the reader's rows for samples index.json lists but the shard lacks
        counts["empty_shard" if not samples else "missing_from_shard"] += lost
    vae = codec.info.to_dict()
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
    good = 0
    for s in samples:
        status, detail = s.skip or "ok", s.detail
        if status == "ok":
            try:
                clip = decode_mp4(
                    s.parts[schema.VIDEO_EXT], channels=channels, max_frames=job.max_frames
                )  # (T, H0, W0, C)
                if clip.shape[0] == 0:
                    status, detail = "too_short", "no frame decoded"
                else:
                    video = centre_crop_resize(clip, job.size)  # (T, size, size, C)
                    z = codec.encode(video)  # (T', c, h, w)
            except (DecodeError, ValueError) as exc:
                status, detail = "bad_video", str(exc)
        counts[status] += 1
        if status != "ok":
            log.warning("skip %s %s key=%s: %s", status, shard.url, s.key, detail)
            continue
        npy = io.BytesIO()
        np.save(npy, z.astype(np.float16), allow_pickle=False)
        meta = schema.latent_meta_json(s.meta, z.shape, codec.info.video_frames(z.shape[0]), vae)
        for name, data in (
            (schema.member_name(s.key, schema.META_EXT), meta),
            (schema.member_name(s.key, schema.LATENT_EXT), npy.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
        good += 1
    tar.close()
    data = buf.getvalue()
    name = shard.url.rstrip("/").rsplit("/", 1)[-1]
    storage = job.storage()
    write_bytes(join(job.out, name), data, storage)  # whole, atomic
    record = {
        "name": name,
        "num_samples": good,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "counts": dict(counts),
        "vae_sha256": vae["sha256"],
        "vae": vae,
        "source": shard.url,
    }
    write_bytes(join(job.out, name + DONE_SUFFIX), json.dumps(record).encode(), storage)
    return record


class ShardEncoder:
    """``map_batches`` class: one ``VaeCodec`` per actor; rows ``{"shard": i}`` in, done
    records (as JSON strings) out."""

    def __init__(self, job: EncodeJob, shards: list[ShardInfo]) -> None:
        if job.s3_endpoint:
            os.environ.setdefault("AWS_ENDPOINT_URL", job.s3_endpoint)
        self.job, self.shards = job, shards
        self.codec = VaeCodec(job.vae_kind, job.vae_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [
            json.dumps(encode_shard(self.job, self.codec, self.shards[int(i)]))
            for i in batch["shard"]
        ]
        return {"record": np.asarray(records, dtype=object)}


# --------------------------------------------------------------------------- #
#                                  The job                                    #
# --------------------------------------------------------------------------- #


def done_record(job: EncodeJob, name: str, sha: str, storage: Storage) -> dict[str, Any] | None:
    """The done record of output shard ``name`` if it is complete and verified (same VAE,
    the output shard's size and sha256 as recorded), else ``None``.

    Raises:
        ValueError: the record was written with another VAE (``--out`` holds its latents).
    """
    url = join(job.out, name + DONE_SUFFIX)
    if not exists(url, storage):
        return None
    try:
        record = json.loads(read_bytes(url, storage))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if record.get("vae_sha256") != sha:
        raise ValueError(
            f"{url}: written with VAE sha256 {record.get('vae_sha256')}, this job's VAE is "
            f"{sha}; encode into a new --out (or delete {job.out})"
        )
    try:
        data = read_bytes(join(job.out, name), storage)
    except FileNotFoundError:
        return None
    if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return None
    return record


def plan(job: EncodeJob) -> tuple[list[ShardInfo], dict[str, dict[str, Any]], str]:
    """Check everything before any work: the VAE directory and kind, the frame size, the
    source shards; returns ``(shards, verified done records by name, vae sha256)``.

    Raises:
        FileNotFoundError: no VAE directory / no source shards (one line naming it).
        ValueError: the wrong VAE kind, a size the VAE cannot encode, another VAE's ``--out``.
    """
    _, _, spatial, _ = vae_geometry(job.vae_kind, job.vae_dir)
    if job.size % spatial:
        raise ValueError(
            f"--size {job.size}: not divisible by the VAE's spatial compression {spatial} "
            f"({job.vae_dir})"
        )
    if job.out.rstrip("/") == job.src.rstrip("/"):
        raise ValueError(f"--out {job.out}: the same as --shards; write latents elsewhere")
    sha = vae_sha256(job.vae_dir)
    shards = shard_list(DataConfig(shards=job.src, s3_endpoint_url=job.s3_endpoint))
    storage = job.storage()
    done = {}
    for s in shards:
        name = s.url.rstrip("/").rsplit("/", 1)[-1]
        record = done_record(job, name, sha, storage)
        if record is not None:
            done[name] = record
    return shards, done, sha


def write_index(job: EncodeJob, shards: list[ShardInfo], records: dict[str, dict]) -> dict:
    """``index.json`` of the latent set from the done records (in source order); shards
    without a good sample are left out (the reader would count them as empty)."""
    first = next(iter(records.values()))
    vae = first["vae"]
    entries, counts = [], Counter()
    for s in shards:
        r = records[s.url.rstrip("/").rsplit("/", 1)[-1]]
        counts.update(r["counts"])
        if r["num_samples"]:
            entries.append({k: r[k] for k in ("name", "num_samples", "bytes", "sha256")})
    size = job.size // int(vae["spatial_compression"])
    latent = schema.LatentSet(
        latent_channels=int(vae["latent_channels"]),
        latent_size=(size, size),
        temporal_compression=int(vae["temporal_compression"]),
        vae={**vae, "dir": os.path.abspath(job.vae_dir)},
    )
    index = {
        "format": schema.FORMAT,
        "shards": entries,
        "num_samples": sum(e["num_samples"] for e in entries),
        "meta": {**latent.to_meta(), "source": job.src, "size": job.size,
                 "max_frames": job.max_frames, "counts": dict(sorted(counts.items()))},
    }  # fmt: skip
    write_bytes(
        join(job.out, schema.INDEX_NAME),
        json.dumps(index, indent=1, sort_keys=True).encode(),
        job.storage(),
    )
    return index


def default_size(src: str, s3_endpoint: str | None) -> int | None:
    """The frame size ``make-shards`` recorded in the source ``index.json`` (or ``None``)."""
    storage = Storage.from_config(DataConfig(shards=src, s3_endpoint_url=s3_endpoint))
    url = join(src, schema.INDEX_NAME)
    if not exists(url, storage):
        return None
    size = parse_index(read_bytes(url, storage), url).get("meta", {}).get("size")
    return int(size) if isinstance(size, int) else None


def run_encode(
    job: EncodeJob,
    *,
    actors: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Encode every pending shard of ``job`` on an actor pool; write ``index.json``.

    Args:
        job: what to encode.
        actors: VAE actors (default: one per GPU of the cluster, else 1).
        progress: called with each finished shard's done record.

    Returns:
        ``{"index": ..., "encoded": [names], "skipped": [names already done]}``.
    """
    import ray

    from flowception.pipelines.ray_session import connect

    job = job.absolute()
    shards, done, _ = plan(job)  # fails before Ray is touched
    pending = [i for i, s in enumerate(shards) if s.url.rsplit("/", 1)[-1] not in done]
    encoded = []
    if pending:
        connect()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        size = max(1, min(actors or gpus or 1, len(pending)))
        ds = ray.data.from_items([{"shard": i} for i in pending], override_num_blocks=len(pending))
        out = ds.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={"job": job, "shards": shards},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=1 if gpus else 0,
            num_cpus=1,
        )
        for row in out.iter_rows():
            record = json.loads(row["record"])
            done[record["name"]] = record
            encoded.append(record["name"])
            if progress:
                progress(record)
    index = write_index(job, shards, done)
    return {"index": index, "encoded": encoded, "skipped": sorted(set(done) - set(encoded))}


def encode_in_process(job: EncodeJob, device: str | None = None) -> dict[str, Any]:
    """The same encode as ``run_encode`` as a plain single-process loop (one VAE, no Ray):
    the baseline of ``benchmarks/bench_latents.py``."""
    job = job.absolute()
    shards, done, _ = plan(job)
    codec = VaeCodec(job.vae_kind, job.vae_dir, device)
    encoded = []
    for s in shards:
        name = s.url.rstrip("/").rsplit("/", 1)[-1]
        if name not in done:
            done[name] = encode_shard(job, codec, s)
            encoded.append(name)
    return {"index": write_index(job, shards, done), "encoded": encoded}
