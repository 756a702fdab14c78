"""Typed, frozen, validated configuration of the data path.

``DataConfig`` says where the shards are (a local directory or an ``s3://`` prefix),
how a clip is cut from each video (length, stride, start), the frame size and
channels, the frame budget of a training batch, the seed, and how Ray Data runs the
decode. ``cluster/`` composes it into its config tree; it round-trips through
``to_dict()`` / ``from_dict()`` and rejects unknown keys and bad values with a
``ValueError`` naming the field.

S3 credentials never appear here: they come from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or an AWS
profile), as s3fs reads them. The endpoint may come from the config or from
``FLOWCEPTION_S3_ENDPOINT`` / ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import model_validator

from flowception.config import Config

ClipStart = Literal["random", "first"]
VaeKind = Literal["none", "image", "video"]
ENDPOINT_ENV = ("FLOWCEPTION_S3_ENDPOINT", "AWS_ENDPOINT_URL")


class DataConfig(Config):
    """Where the shards are and how clips become training batches."""

    # Throughput and storage knobs: the same data read faster or from elsewhere is the same run.
    infra_fields = frozenset(
        {"decode_workers", "decode_threads", "units_per_task", "s3_endpoint_url", "s3_region",
         "s3_anon", "storage_retries", "vae_dir", "vae_sha256"}
    )  # fmt: skip

    shards: str = "data/moving_mnist/train"
    """Local directory or ``s3://bucket/prefix`` holding the ``*.tar`` shards (and ``index.json``)."""
    num_frames: int = 16
    """Maximum frames per clip; longer videos are cut, shorter ones keep their length."""
    min_frames: int = 2
    """Clips with fewer frames than this (after the stride) are skipped as ``too_short``."""
    frame_stride: int = 1
    """Temporal stride: keep every ``frame_stride``-th frame of the source video."""
    clip_start: ClipStart = "random"
    """``random``: a seeded start offset per (seed, epoch, key); ``first``: always frame 0."""
    size: int = 64
    """Frame height = width ``H = W`` after a centre crop to square and a resize."""
    channels: Literal[1, 3] = 1
    """``1``: grayscale (Moving MNIST; stored as 3-channel MP4, reduced on read); ``3``: RGB."""
    frame_budget: int = 256
    """Upper bound on the sum of clip lengths in one batch (videos of mixed lengths)."""
    max_batch_size: int = 64
    """Upper bound on the number of videos ``B`` in one batch."""
    seed: int = 0
    """Seed of the shard order, the sample order within a shard and the clip starts."""
    shuffle: bool = True
    """Permute shards and samples within a shard per (seed, epoch); ``False`` keeps index order."""
    epochs: int = 1
    """Passes over the shards covered by one dataset stream (each with its own order)."""
    min_usable_fraction: float = 0.5
    """A finished epoch with fewer good samples than this share of its samples (index.json's count) fails the run."""
    decode_workers: int = 2
    """Maximum concurrent read+decode tasks in Ray Data."""
    decode_threads: int = 1
    """FFmpeg threads per decode (1 is best when many decodes run in parallel)."""
    units_per_task: int = 12
    """Shards read by one Ray Data task (one block each, in stream order); more amortise
    the executor's per-task scheduling gap (about 0.15 s measured), fewer start sooner.
    Fewer are taken when a rank's reads would otherwise make fewer tasks than ``decode_workers``."""
    s3_endpoint_url: str | None = None
    """S3 endpoint (MinIO, moto, ...); ``None``: ``FLOWCEPTION_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL`` or AWS."""
    s3_region: str | None = None
    """S3 region; ``None``: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the SDK default."""
    s3_anon: bool = False
    """Anonymous S3 access (public buckets); credentials otherwise come from the environment."""
    storage_retries: int = 3
    """Tries per S3 request on connection errors, timeouts, throttling, 5xx (``shards.retry_policy``)."""
    vae: VaeKind = "none"
    """``none``: pixel shards; ``image`` / ``video``: the shards hold latents of that VAE kind (``flowception data encode``; docs/latents.md)."""
    vae_dir: str | None = None
    """Local directory of the VAE that made the latent shards (diffusers ``save_pretrained``); decodes samples, never downloaded."""
    vae_sha256: str | None = None
    """sha256 of ``vae_dir``'s files; ``None``: taken from the shards' ``index.json`` at launch (set it to pin one VAE)."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not isinstance(self.shards, str) or not self.shards:
            raise ValueError(
                f"DataConfig.shards={self.shards!r}: expected a directory or s3:// URI"
            )
        for name in (
            "num_frames",
            "min_frames",
            "frame_stride",
            "size",
            "frame_budget",
            "max_batch_size",
            "epochs",
            "decode_workers",
            "decode_threads",
            "units_per_task",
            "storage_retries",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"DataConfig.{name}={value!r}: expected an int > 0")
        if self.min_frames > self.num_frames:
            raise ValueError(
                f"DataConfig.min_frames={self.min_frames!r}: larger than num_frames={self.num_frames}"
            )
        if self.frame_budget < self.num_frames:
            raise ValueError(
                f"DataConfig.frame_budget={self.frame_budget!r}: smaller than num_frames="
                f"{self.num_frames}, a full-length clip would never fit"
            )
        if self.size % 2:
            raise ValueError(f"DataConfig.size={self.size!r}: must be even (yuv420p frames)")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed={self.seed!r}: expected an int >= 0")
        if not 0.0 <= self.min_usable_fraction <= 1.0:
            raise ValueError(
                f"DataConfig.min_usable_fraction={self.min_usable_fraction!r}: expected 0 <= x <= 1"
            )
        if self.vae != "none" and not self.vae_dir:
            raise ValueError(
                f"DataConfig.vae_dir=None: required when vae={self.vae!r} (the VAE's local directory)"
            )
        if self.vae == "none" and (self.vae_dir or self.vae_sha256):
            raise ValueError(
                f"DataConfig.vae_dir={self.vae_dir!r}: set data.vae=image or video for latent shards"
            )
        if self.vae_sha256 is not None and (
            len(self.vae_sha256) != 64 or set(self.vae_sha256) - set("0123456789abcdef")
        ):
            raise ValueError(f"DataConfig.vae_sha256={self.vae_sha256!r}: expected 64 hex digits")
        return self

    # ------------------------------------------------------------------ #

    @property
    def is_s3(self) -> bool:
        """Whether ``shards`` is an ``s3://`` URI."""
        return self.shards.startswith("s3://")

    def endpoint_url(self) -> str | None:
        """The S3 endpoint: the config's, else the first set of ``ENDPOINT_ENV``, else ``None``."""
        if self.s3_endpoint_url:
            return self.s3_endpoint_url
        for var in ENDPOINT_ENV:
            if os.environ.get(var):
                return os.environ[var]
        return None
