"""Run one experiment: services, the parent MLflow run, the table and the plot.

    flowception experiment baselines --quick
    flowception experiment insertion-order steps=200 arms=[learned,hierarchical]

[1] services: ``MLFLOW_TRACKING_URI`` (or ``tracking_uri=``), else a local MLflow
    server under ``{out}/mlflow`` for the duration; a local Ray (``num_cpus=2``) when
    the experiment trains or evaluates and none is connected
[2] the parent run (experiment ``flowception-experiments``, run name = experiment name)
[3] the experiment module's ``run(ctx)``: one child run per arm (tag ``mlflow.parentRunId``)
[4] ``results.md`` + ``results.csv`` + ``plot.png`` + ``summary.json`` in
    ``{out}/{name}/``, logged as artifacts of the parent
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowception.eval.experiments import EXPERIMENTS
from flowception.eval.experiments.config import ExperimentConfig

ROLE_TAG = "flowception.experiment_role"


@dataclass
class ExperimentContext:
    """What an experiment module gets: its config, MLflow handles and output folder."""

    cfg: ExperimentConfig
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    folder: Path
    notes: list[str] = field(default_factory=list)
    """Lines printed and written under the table (e.g. "train_flops not logged")."""

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def child_run(self, arm: str, params: dict[str, Any] | None = None, role: str = "arm") -> str:
        """A run under the parent, tagged with ``mlflow.parentRunId``; returns its id."""
        tags = {"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: role,
                "flowception.experiment": self.cfg.name, "flowception.arm": arm}  # fmt: skip
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=arm).info.run_id
        for key, value in (params or {}).items():
            self.client.log_param(run_id, key, value)
        return run_id

    def adopt(self, run_id: str, arm: str, role: str = "arm") -> None:
        """Make an existing run (a training run made by ``cluster.launch``) a child."""
        client = self.client
        for key, value in {"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: role,
                           "flowception.experiment": self.cfg.name, "flowception.arm": arm}.items():  # fmt: skip
            client.set_tag(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, close: bool = True) -> None:
        """Finite numeric metrics into ``run_id`` (NaN and None are skipped)."""
        client = self.client
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                client.log_metric(run_id, key, float(value))
        if close:
            client.set_terminated(run_id)


# --------------------------------------------------------------------------- #
#                                  services                                   #
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def services(cfg: ExperimentConfig, *, needs_ray: bool) -> Iterator[str]:
    """Yield a tracking URI; start a local MLflow server / Ray only when none is given."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    with contextlib.ExitStack() as stack:
        if not uri:
            from flowception.cluster.mlflow_server import mlflow_server

            root = (Path(cfg.out) / "mlflow").resolve()
            uri = stack.enter_context(mlflow_server(root))
            print(f"MLflow: local server {uri} (store {root}); after the run view it with\n"
                  f"  flowception mlflow-server --root {root} --port 5000  # then open "
                  "http://127.0.0.1:5000", flush=True)  # fmt: skip
        if needs_ray:
            from flowception.pipelines.ray_session import ray_session

            stack.enter_context(ray_session(2))
        yield uri


# --------------------------------------------------------------------------- #
#                                 the run                                     #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ExperimentResult:
    """Rows of the table, the files written and the parent MLflow run."""

    name: str
    rows: list[dict[str, Any]]
    folder: Path
    files: dict[str, Path]
    parent_run_id: str
    tracking_uri: str
    seconds: float


def run_experiment(cfg: ExperimentConfig) -> ExperimentResult:
    """Run ``cfg.name`` end to end (see the module docstring for the stages)."""
    module = importlib.import_module(EXPERIMENTS[cfg.name])
    folder = cfg.folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] services ({cfg.name}{', quick' if cfg.quick else ''})", flush=True)
    with services(cfg, needs_ray=getattr(module, "NEEDS_RAY", False)) as uri:
        from mlflow.tracking import MlflowClient

        from flowception.cluster.tracking import safe_params
        from flowception.config import flatten

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
        parent = client.create_run(exp_id, run_name=cfg.name, tags={
            ROLE_TAG: "parent", "flowception.experiment": cfg.name}).info.run_id  # fmt: skip
        print(f"[2/4] parent MLflow run {parent} in experiment {cfg.experiment!r}", flush=True)
        for key, value in safe_params(flatten(cfg.to_dict(), "experiment.")).items():
            client.log_param(parent, key, value)
        ctx = ExperimentContext(cfg, uri, parent, exp_id, folder)
        status = "FAILED"
        try:
            print(f"[3/4] arms: {module.__name__}.run", flush=True)
            rows = module.run(ctx)
            print(f"[4/4] table and plot -> {folder}", flush=True)
            files = write_table(rows, folder, notes=ctx.notes, title=module.TITLE)
            files["plot"] = module.plot(rows, folder / "plot.png")
            seconds = time.perf_counter() - t0
            files["summary"] = folder / "summary.json"
            files["summary"].write_text(json.dumps({"name": cfg.name, "quick": cfg.quick,
                "seconds": round(seconds, 1), "parent_run_id": parent, "tracking_uri": uri,
                "config": cfg.to_dict(), "rows": rows, "notes": ctx.notes},
                indent=1, default=str))  # fmt: skip
            for path in files.values():
                client.log_artifact(parent, str(path))
            client.log_metric(parent, "experiment_seconds", seconds)
            status = "FINISHED"
        finally:
            client.set_terminated(parent, status)
    result = ExperimentResult(cfg.name, rows, folder, files, parent, uri, seconds)
    print_result(result, ctx.notes)
    return result


# --------------------------------------------------------------------------- #
#                                   tables                                    #
# --------------------------------------------------------------------------- #


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table; columns in first-seen order over all rows."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[dict[str, Any]], folder: Path, *, notes: Sequence[str] = (), title: str = ""
) -> dict[str, Path]:
    """``results.md`` (title, table, notes) and ``results.csv`` in ``folder``."""
    if not rows:
        raise ValueError(f"no rows to write in {folder}")
    md = folder / "results.md"
    text = (f"# {title}\n\n" if title else "") + markdown_table(rows)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md.write_text(text)
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    out = folder / "results.csv"
    out.write_text(buf.getvalue())
    return {"markdown": md, "csv": out}


def print_result(result: ExperimentResult, notes: Sequence[str]) -> None:
    print("\n" + "=" * 72)
    print(f"experiment {result.name} finished in {result.seconds:.0f} s")
    print(markdown_table(result.rows))
    for n in notes:
        print(f"note: {n}")
    print(f"Outputs:   {result.folder}  (results.md, results.csv, plot.png, summary.json)")
    print(f"MLflow:    {result.tracking_uri}  parent run {result.parent_run_id}")
    print("=" * 72, flush=True)
