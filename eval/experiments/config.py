"""Typed recipe of one experiment: ``configs/experiments/NAME.yaml`` + ``--quick`` + overrides.

A recipe is a flat mapping of :class:`ExperimentConfig` fields plus an optional
``quick:`` mapping that replaces fields under ``--quick``; command-line overrides
(``steps=50 arms=[learned,random] train=[optim.lr=3e-4]``) come last. Unknown keys
are an error naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from flowception.config import Config, apply_overrides, load_yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "configs" / "experiments"


class ExperimentConfig(Config):
    """One experiment run (all sizes; the experiment module reads what it needs)."""

    name: str
    """Experiment name (``schedule``, ``baselines``, ``insertion-order``, ...)."""
    out: str = "outputs/experiments"
    """Root folder; results land in ``{out}/{name}/``, shared data in ``{out}/data/``."""
    arms: tuple[str, ...] = ()
    """Arms to run (empty = the experiment's default arms)."""
    train_config: str = "configs/demo-cpu.yaml"
    """Training recipe every arm starts from (relative to the repository root)."""
    steps: int = 300
    """Training steps of every trained arm."""
    shards: str | None = None
    """Training shards (local or ``s3://``); default: Moving MNIST made under ``{out}/data``."""
    test_shards: str | None = None
    """Eval shards; default: ``shards`` with a trailing ``train`` -> ``test``."""
    train_videos: int = 400
    """Moving MNIST training videos (32x32, 10-16 frames)."""
    test_videos: int = 48
    """Moving MNIST test videos (real side of FVD and the length law)."""
    eval_videos: int = 24
    """Generated (and real) videos per evaluated arm."""
    sample_steps: int = 16
    """Sampler steps ``K`` at evaluation."""
    train: tuple[str, ...] = ()
    """Extra dotted overrides of the training config, applied to every arm."""
    eval: tuple[str, ...] = ()
    """Extra dotted overrides of the eval job, applied to every arm."""
    detector: str | None = None
    """Converted I3D weights; default: ``flowception assets i3d`` into ``{out}/assets``."""
    checkpoint: str | None = None
    """``insertion-order``: evaluate this checkpoint instead of training one."""
    lengths: tuple[int, ...] = (8, 16, 32)
    """``cost``: video lengths ``L``; ``schedule``: ``L`` of the exact E22 row."""
    draws: int = 20000
    """``schedule``: training-sampler draws; ``cost``: ignored."""
    repeats: int = 3
    """``cost``: timed sampler runs per arm (after one warm-up)."""
    videos: int = 8
    """``cost``: videos per sampler call."""
    seed: int = 0
    """Seed of data draws, training and sampling."""
    tracking_uri: str | None = None
    """MLflow server; default ``MLFLOW_TRACKING_URI``, else a local server for the run."""
    experiment: str = "flowception-experiments"
    """MLflow experiment holding the parent runs."""
    quick: bool = False
    """Set by ``--quick`` (recorded as a parameter)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Free-form notes copied into the parent run's parameters."""

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        from flowception.eval.experiments import EXPERIMENTS

        if self.name not in EXPERIMENTS:
            raise ValueError(
                f"ExperimentConfig.name={self.name!r}: expected one of {list(EXPERIMENTS)}"
            )
        for key in ("steps", "train_videos", "test_videos", "eval_videos", "sample_steps",
                    "draws", "repeats", "videos"):  # fmt: skip
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"ExperimentConfig.{key}={value!r}: must be an integer >= 1")
        if any(n < 4 for n in self.lengths):
            raise ValueError(f"ExperimentConfig.lengths={self.lengths!r}: each must be >= 4")
        return self

    @property
    def folder(self) -> Path:
        """``{out}/{name}`` (absolute)."""
        return (Path(self.out) / self.name).resolve()

    def pick_arms(self, default: tuple[str, ...], allowed: tuple[str, ...] | None = None) -> tuple:
        """The arms to run: ``arms`` when given (each checked against ``allowed``), else ``default``."""
        arms = self.arms or default
        bad = [a for a in arms if a not in (allowed or default)]
        if bad:
            raise ValueError(
                f"{self.name}: unknown arm(s) {bad}; expected some of {list(allowed or default)}"
            )
        return arms


def load_experiment(name: str, *, quick: bool = False, overrides: list[str] | None = None):
    """``configs/experiments/{name}.yaml`` (its ``quick:`` block under ``quick``) + overrides.

    Raises:
        ValueError: unknown experiment, unknown key or bad value.
    """
    from flowception.eval.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {list(EXPERIMENTS)}")
    path = RECIPES / f"{name}.yaml"
    data: dict[str, Any] = load_yaml(path) if path.exists() else {}
    quick_block = data.pop("quick", {}) or {}
    if quick:
        data.update(quick_block)
    data.update(name=name, quick=quick)
    return ExperimentConfig.from_dict(
        apply_overrides(data, list(overrides or []), ExperimentConfig)
    )


def bench_model():
    """``benchmarks/bench_model.py`` of this checkout, loaded by path (it is a script, not a
    package): the schedule and cost experiments reuse its E22-E24 measurements."""
    import importlib.util

    path = ROOT / "benchmarks" / "bench_model.py"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the schedule / cost experiments need a source checkout")
    spec = importlib.util.spec_from_file_location("flowception_bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
