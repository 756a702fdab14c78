"""The training config tree: one frozen dataclass per concern, composed here.

``TrainConfig`` composes ``model.config.ModelConfig`` and ``MethodConfig``,
``pipelines.config.DataConfig`` and the cluster-side sections below (optimiser,
DeepSpeed, checkpoints, tracking, cluster). Recipes are YAML files in ``configs/``;
the CLI applies dotted overrides (``optim.lr=3e-4``). Unknown keys and bad values
are a ``ValueError`` naming the key and the value, raised before Ray is touched.

    cfg = load_config("configs/demo-cpu.yaml", ["optim.lr=1e-3", "cluster.num_workers=2"])
    TrainConfig.from_dict(cfg.to_dict()) == cfg   # Ray train_loop_config, MLflow params
    cfg.hash()                                    # 12 hex chars, the run's identity
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flowception.model.config import (
    ConfigMixin,
    MethodConfig,
    ModelConfig,
    coerce_numbers,
    model_config,
)
from flowception.model.config import apply_overrides as _apply_overrides
from flowception.pipelines.config import DataConfig


def _require(ok: bool, section: object, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{type(section).__name__}.{name}={getattr(section, name)!r}: {why}")


# --------------------------------------------------------------------------- #
#                                 Sections                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, kw_only=True)
class OptimConfig(ConfigMixin):
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

    def __post_init__(self) -> None:
        self._check_literals()
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
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


@dataclass(frozen=True, kw_only=True)
class DeepSpeedConfig(ConfigMixin):
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

    def __post_init__(self) -> None:
        self._check_literals()
        _require(self.bucket_size > 0, self, "bucket_size", "must be > 0")
        _require(
            not self.offload_optimizer or self.zero_stage >= 1,
            self,
            "offload_optimizer",
            "needs zero_stage >= 1",
        )


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig(ConfigMixin):
    """When checkpoints are written and where a run resumes from."""

    every_steps: int = 1000
    """All ranks write ``step_{step:07d}/`` every this many steps (and at the last step)."""
    keep: int | None = 3
    """Checkpoints kept by Ray Train (oldest deleted first); ``None`` keeps all."""
    resume_from: str | None = None
    """Checkpoint directory or URI, or a run directory (its latest complete checkpoint)."""
    export: bool = True
    """Write ``export/`` (fp32 ``model.safetensors`` + EMA + ``config.yaml``) at the end."""

    def __post_init__(self) -> None:
        _require(self.every_steps >= 1, self, "every_steps", "must be >= 1")
        _require(self.keep is None or self.keep >= 1, self, "keep", "must be >= 1 or None")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig(ConfigMixin):
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
    max_buffered: int = 10_000
    """Metric rows kept while the server is unreachable (oldest dropped beyond this)."""

    def __post_init__(self) -> None:
        self._check_literals()
        _require(self.log_every >= 1, self, "log_every", "must be >= 1")
        _require(self.sample_every >= 0, self, "sample_every", "must be >= 0")
        _require(self.num_samples >= 1, self, "num_samples", "must be >= 1")
        _require(self.max_buffered >= 1, self, "max_buffered", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(ConfigMixin):
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

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, self, "num_workers", "must be >= 1")
        _require(self.cpus_per_worker > 0, self, "cpus_per_worker", "must be > 0")
        _require(bool(self.storage_path), self, "storage_path", "must be set")
        _require(self.max_failures >= -1, self, "max_failures", "must be >= -1 (-1 = forever)")
        _require(self.timeout_s > 0, self, "timeout_s", "must be > 0")


# --------------------------------------------------------------------------- #
#                                 The tree                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one training run needs; ``to_dict()`` is its ``train_loop_config``."""

    steps: int = 1000
    """Optimiser steps of the whole run."""
    seed: int = 0
    """Seed of the model init and of each rank's training-sampler generator."""
    model: ModelConfig = field(default_factory=lambda: model_config("tiny"))
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (name == "steps"):
                raise ValueError(
                    f"TrainConfig.{name}={value!r}: expected an int >= {int(name == 'steps')}"
                )
        if self.data.encoder == "none":
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

    # -- (de)serialisation ---------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict; ``from_dict(to_dict())`` is equal to ``self``."""
        out: dict[str, Any] = {"steps": self.steps, "seed": self.seed}
        for name in SECTIONS:
            out[name] = getattr(self, name).to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; ``model.size`` picks a registry entry to override."""
        data = dict(data)
        unknown = sorted(set(data) - set(SECTIONS) - {"steps", "seed"})
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown key(s) {unknown}; known: {['steps', 'seed', *SECTIONS]}"
            )
        kwargs: dict[str, Any] = {k: data[k] for k in ("steps", "seed") if k in data}
        for name, section in SECTIONS.items():
            if name not in data:
                continue
            value = data[name]
            if not isinstance(value, dict):
                raise ValueError(f"{name}={value!r}: expected a mapping")
            if name == "model" and "size" in value:
                value = dict(value)
                size = value.pop("size")
                base = model_config(size).to_dict()
                unknown = sorted(set(value) - set(base))
                if unknown:
                    raise ValueError(f"ModelConfig: unknown key(s) {unknown}")
                value = {**base, **value}
            kwargs[name] = section.from_dict(coerce_numbers(section, value))
        return cls(**kwargs)

    def to_yaml(self) -> str:
        """The config as YAML (what ``config.yaml`` in checkpoints and exports holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"optim.lr": 3e-4, ...}``: the MLflow params."""
        return flatten(self.to_dict())

    def hash(self) -> str:
        """12 hex chars identifying what is trained (model, method, data, optim, seed, steps).

        Cluster, tracking and checkpoint settings are left out: the same run resumed
        on another cluster or logged elsewhere keeps its hash.
        """
        d = self.to_dict()
        keep = {k: d[k] for k in ("steps", "seed", "model", "method", "data", "optim")}
        keep["zero_stage"] = d["deepspeed"]["zero_stage"]
        blob = json.dumps(keep, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def run_name(self) -> str:
        """The run directory name: ``cluster.name`` or ``{method}-{hash}``."""
        return self.cluster.name or f"{self.method.method}-{self.hash()}"

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, Any] = {
    "model": ModelConfig,
    "method": MethodConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "deepspeed": DeepSpeedConfig,
    "checkpoint": CheckpointConfig,
    "tracking": TrackingConfig,
    "cluster": ClusterConfig,
}


# --------------------------------------------------------------------------- #
#                          Recipes and overrides                              #
# --------------------------------------------------------------------------- #


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (YAML values, ``1e-3`` a float) to a nested dict.

    Keys are checked against the tree first, so a typo names the override; values
    are parsed by ``model.config.apply_overrides`` (the project's one parser).

    Raises:
        ValueError: malformed override, or a key that no section has.
    """
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected section.key=value")
        parts = key.split(".")
        if len(parts) == 1:
            if parts[0] not in ("steps", "seed"):
                raise ValueError(f"override {item!r}: unknown key {key!r}")
        elif len(parts) == 2:
            section, name = parts
            if section not in SECTIONS:
                raise ValueError(f"override {item!r}: unknown section {section!r}")
            known = {f.name for f in dataclasses.fields(SECTIONS[section])}
            if section == "model":
                known.add("size")
            if name not in known:
                raise ValueError(f"override {item!r}: unknown key {key!r}")
        else:
            raise ValueError(f"override {item!r}: keys are 'section.key' or 'steps' / 'seed'")
    return _apply_overrides(data, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults), apply dotted overrides and validate.

    Args:
        path: YAML recipe, e.g. ``configs/demo-cpu.yaml``; ``None`` starts from defaults.
        overrides: ``["optim.lr=1e-3", "cluster.num_workers=4"]``.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: unknown key or invalid value, naming it.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config {str(path)!r} not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config {str(path)!r}: expected a mapping at the top level")
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))
