"""Compare MLflow runs: a table of final and best metrics and a PNG of metrics over steps.

flowception compare RUN_A RUN_B                      # run ids or run names
flowception compare a1b2 c3d4 --metrics loss/velocity eval/fvd2048_16f --out outputs/compare
MLFLOW_TRACKING_URI=http://mlflow:5000 flowception compare flowception-x full_sequence-y
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOWER_IS_BETTER = ("loss", "fvd", "wasserstein", "grad_norm")


def higher_is_better(metric: str) -> bool:
    """FVD, losses and distances go down; VBench-style scores go up."""
    return not any(part in metric for part in LOWER_IS_BETTER)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    final: dict[str, float]
    best: dict[str, float]
    history: dict[str, list[tuple[int, float]]]


def resolve_run(client, ref: str):
    """A run by id, else by run name (the newest of that name) across experiments."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exps,
        filter_string=f"attributes.run_name = '{ref}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ValueError(f"run {ref!r}: no MLflow run with that id or name")
    return runs[0]


def summarize(client, ref: str, metrics: Sequence[str] | None = None) -> RunSummary:
    run = resolve_run(client, ref)
    keys = sorted(metrics or run.data.metrics.keys())
    history, final, best = {}, {}, {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        if not points:
            continue
        history[key] = points
        final[key] = points[-1][1]
        values = [v for _, v in points]
        best[key] = max(values) if higher_is_better(key) else min(values)
    return RunSummary(run.info.run_id, run.info.run_name or run.info.run_id, final, best, history)


def compare_runs(
    refs: Sequence[str],
    *,
    tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    out_dir: str | Path = "outputs/compare",
) -> tuple[str, Path]:
    """Markdown table (printed and written) and ``metrics.png`` of the runs."""
    from mlflow.tracking import MlflowClient

    from flowception.eval.visualize import pyplot

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    client = MlflowClient(uri)
    runs = [summarize(client, r, metrics) for r in refs]
    keys = sorted(set().union(*(r.final for r in runs)))
    if metrics is None:  # default: the metrics every run has
        keys = [k for k in keys if all(k in r.final for r in runs)]
    header = "| metric | " + " | ".join(f"{r.name} final | best" for r in runs) + " |"
    lines = [header, "|---|" + "---|---|" * len(runs)]
    for key in keys:
        cells = [
            f"{r.final[key]:.4g} | {r.best[key]:.4g}" if key in r.final else "- | -" for r in runs
        ]
        arrow = "↑" if higher_is_better(key) else "↓"
        lines.append(f"| {key} {arrow} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    plt = pyplot()
    shown = keys[:12]
    cols = min(3, max(1, len(shown)))
    rows = (len(shown) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, shown):
        for r in runs:
            if key in r.history:
                steps, values = zip(*r.history[key])
                ax.plot(
                    steps,
                    values,
                    marker="o" if len(steps) < 30 else None,
                    markersize=3,
                    label=r.name,
                )
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if shown:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    png = out / "metrics.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return table, png
