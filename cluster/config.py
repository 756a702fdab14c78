"""The training config tree: one frozen dataclass per concern, composed here.

``TrainConfig`` composes ``model.config.ModelConfig`` and ``MethodConfig``,
``pipelines.config.DataConfig`` and the cluster-side sections below (optimiser,
DeepSpeed, checkpoints, tracking, cluster). Recipes are YAML files in ``configs/``;
the CLI applies dotted overrides (``optim.lr=3e-4``). Unknown keys and bad values
are a ``ValueError`` naming the key and the value, raised before Ray is touched.

    cfg = load_config("configs/demo-cpu.yaml", ["optim.lr=1e-3", "cluster.num_workers=2"])
    TrainConfig.from_dict(cfg.to_dict()) == cfg   # Ray train_loop_config, MLflow params
    cfg.hash()                                    # 12 hex chars, the run's identity

Every section is a ``flowception.config.Config`` (pydantic v2, frozen, unknown keys
rejected): the one config system, shared with ``model``, ``pipelines`` and ``eval``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from flowception.config import Config, load
from flowception.model.config import MethodConfig, ModelConfig, model_config
from flowception.pipelines.config import DataConfig

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _require(ok: bool, section: object, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{type(section).__name__}.{name}={getattr(section, name)!r}: {why}")


# --------------------------------------------------------------------------- #
#                                 Sections                                    #
# --------------------------------------------------------------------------- #


class OptimConfig(Config):
    """AdamW, the learning-rate schedule, gradient clipping and EMA."""

    lr: float = 3e-4
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW ``(beta1, beta2)``."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr`` over this many optimiser steps."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay from ``lr`` to ``min_lr_ratio * lr`` after warmup."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (DeepSpeed ``gradient_clipping``); 0 = off."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimiser step."""
    ema_decay: float = 0.999
    """EMA decay of the weights used for sampling and export."""

    @model_validator(mode="after")
    def _check(self):
        _require(self.lr > 0, self, "lr", "must be > 0")
        _require(len(self.betas) == 2, self, "betas", "expected two values")
        _require(all(0 <= b < 1 for b in self.betas), self, "betas", "must be in [0, 1)")
        _require(self.eps > 0, self, "eps", "must be > 0")
        _require(self.weight_decay >= 0, self, "weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, self, "warmup_steps", "must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, self, "min_lr_ratio", "must be in [0, 1]")
        _require(self.grad_clip >= 0, self, "grad_clip", "must be >= 0")
        _require(self.grad_accum_steps >= 1, self, "grad_accum_steps", "must be >= 1")
        _require(0 <= self.ema_decay < 1, self, "ema_decay", "must be in [0, 1)")
        return self


class DeepSpeedConfig(Config):
    """What goes into the DeepSpeed JSON (built by ``cluster.deepspeed_config``)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 plain DDP, 1 optimiser states, 2 + gradients, 3 + parameters sharded."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU (gloo has no fast bf16 path)."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimiser states to CPU memory (stage >= 1, GPU runs)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with the backward pass (stages 1-3)."""
    bucket_size: int = 50_000_000
    """Elements per reduce / all-gather bucket."""
    steps_per_print: int = 1_000_000
    """DeepSpeed's own log interval (we log through MLflow instead)."""

    @model_validator(mode="after")
    def _check(self):
        _require(self.bucket_size > 0, self, "bucket_size", "must be > 0")
        _require(
            not self.offload_optimizer or self.zero_stage >= 1,
            self,
            "offload_optimizer",
            "needs zero_stage >= 1",
        )
        return self


class CheckpointConfig(Config):
    """When checkpoints are written and where a run resumes from."""

    every_steps: int = 1000
    """All ranks write ``step_{step:07d}/`` every this many steps (and at the last step)."""
    keep: int | None = 3
    """Checkpoints kept by Ray Train (oldest deleted first); ``None`` keeps all."""
    resume_from: str | None = None
    """Checkpoint directory or URI, or a run directory (its latest complete checkpoint)."""
    export: bool = True
    """Write ``export/`` (fp32 ``model.safetensors`` + EMA + ``config.yaml``) at the end."""

    @model_validator(mode="after")
    def _check(self):
        _require(self.every_steps >= 1, self, "every_steps", "must be >= 1")
        _require(self.keep is None or self.keep >= 1, self, "keep", "must be >= 1 or None")
        return self


class TrackingConfig(Config):
    """MLflow tracking, done by rank 0 only."""

    enabled: bool = True
    """Log to MLflow; off means console logs only."""
    tracking_uri: str | None = None
    """Server URI; ``None``: the ``MLFLOW_TRACKING_URI`` environment variable, else off."""
    experiment: str = "flowception"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; ``None``: ``{method}-{config hash}``."""
    log_every: int = 10
    """Metrics every this many steps."""
    sample_every: int = 500
    """Generate and log sample videos every this many steps (and at the end); 0 = never."""
    num_samples: int = 2
    """Videos per sampling round."""
    sample_steps: int | None = 8
    """Sampler steps per unit time for the periodic samples (``None``: ``method.num_steps``)."""
    video_format: Literal["gif", "mp4"] = "gif"
    """File format of the sample videos."""

    @model_validator(mode="after")
    def _check(self):
        _require(self.log_every >= 1, self, "log_every", "must be >= 1")
        _require(self.sample_every >= 0, self, "sample_every", "must be >= 0")
        _require(self.num_samples >= 1, self, "num_samples", "must be >= 1")
        return self


class ClusterConfig(Config):
    """Ray Train scaling, storage and fault tolerance."""

    num_workers: int = 2
    """Ray Train workers (one DeepSpeed rank each)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16; CPU workers use gloo and fp32."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractional is fine; leave some for Ray Data)."""
    storage_path: str = "runs"
    """Where Ray Train persists checkpoints: local directory or ``s3://bucket/prefix``."""
    storage_endpoint_url: str | None = None
    """S3 endpoint for ``storage_path`` (MinIO, moto); ``None``: AWS or ``AWS_ENDPOINT_URL``."""
    name: str | None = None
    """Run directory name under ``storage_path``; ``None``: ``{method}-{config hash}``."""
    max_failures: int = 0
    """Worker-group restarts from the latest checkpoint before the run fails."""
    timeout_s: int = 1800
    """torch.distributed process-group timeout."""

    @model_validator(mode="after")
    def _check(self):
        _require(self.num_workers >= 1, self, "num_workers", "must be >= 1")
        _require(self.cpus_per_worker > 0, self, "cpus_per_worker", "must be > 0")
        _require(bool(self.storage_path), self, "storage_path", "must be set")
        _require(self.max_failures >= -1, self, "max_failures", "must be >= -1 (-1 = forever)")
        _require(self.timeout_s > 0, self, "timeout_s", "must be > 0")
        _require(
            self.name is None or (_NAME.fullmatch(self.name) is not None and self.name not in (".", "..")),
            self, "name", "expected letters, digits, '.', '_' or '-' (a single path component)",
        )  # fmt: skip
        return self


# --------------------------------------------------------------------------- #
#                                 The tree                                    #
# --------------------------------------------------------------------------- #


class TrainConfig(Config):
    """Everything one training run needs; ``to_dict()`` is its ``train_loop_config``."""

    # Where and how it runs, not what is trained: left out of the run's identity.
    infra_fields = frozenset({"deepspeed", "checkpoint", "tracking", "cluster"})

    steps: int = 1000
    """Optimiser steps of the whole run."""
    seed: int = 0
    """Seed of the model init and of each rank's training-sampler generator."""
    model: ModelConfig = Field(default_factory=lambda: model_config("tiny"))
    """The DiT backbone (``model.size`` picks a registry entry the other keys override)."""
    method: MethodConfig = Field(default_factory=MethodConfig)
    """Training law and sampler."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Shards and batching."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """AdamW, schedule, clipping, EMA."""
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    """DeepSpeed engine."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoints and resume."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Ray Train scaling and storage."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        _require(self.steps >= 1, self, "steps", "must be >= 1")
        _require(self.seed >= 0, self, "seed", "must be >= 0")
        if self.data.vae == "none":  # latent shards are checked against index.json at launch
            size = (self.data.size, self.data.size)
            if self.model.frame_size != size:
                raise ValueError(
                    f"model.frame_size={self.model.frame_size!r}: data.size={self.data.size} "
                    f"gives frames of {size}"
                )
            if self.model.in_channels != self.data.channels:
                raise ValueError(
                    f"model.in_channels={self.model.in_channels!r}: "
                    f"data.channels={self.data.channels}"
                )
        if self.deepspeed.precision == "bf16" and not self.cluster.use_gpu:
            raise ValueError("deepspeed.precision='bf16': needs cluster.use_gpu=true")
        if self.deepspeed.offload_optimizer and not self.cluster.use_gpu:
            raise ValueError("deepspeed.offload_optimizer=True: needs cluster.use_gpu=true")
        return self

    def hash(self) -> str:
        """12 hex chars identifying what is trained: model, method, data content, optim, seed,
        steps. Throughput, storage, logging and cluster knobs (``infra_fields`` of each
        section) are left out, so a run resumed with more decode workers or on another
        cluster keeps its name."""
        return self.identity_hash(12)

    def run_name(self) -> str:
        """The run directory name: ``cluster.name`` or ``{method}-{hash}``."""
        return self.cluster.name or f"{self.method.method}-{self.hash()}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults), apply dotted overrides and validate.

    Args:
        path: YAML recipe, e.g. ``configs/demo-cpu.yaml``; ``None`` starts from defaults.
        overrides: ``["optim.lr=1e-3", "cluster.num_workers=4"]``.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: unknown key or invalid value, naming it.
    """
    return load(TrainConfig, path, overrides)
