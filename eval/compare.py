"""Compare MLflow runs: a table of final and best metrics beside the data's reference
values, and PNG pages of every selected metric over steps.

flowception compare RUN_A RUN_B                      # run ids, run names or experiment/run
flowception compare a1b2 c3d4 --metrics loss eval/fvd64_16f --out outputs/compare
MLFLOW_TRACKING_URI=http://mlflow:5000 flowception compare flowception-x full_sequence-y

"Best" follows :data:`DIRECTIONS`, an explicit table of every metric the project logs;
a metric it does not list gets no best value (``?``). Runs are labelled
``experiment/run`` (eval child runs: ``experiment/parent/run``), with the run id appended
when two labels would still be equal. The ``data`` column holds the real-data reference
of the same metric from the same run: ``real/<key>``, or for FVD its ``real_floor`` and
``static`` points (``eval.job``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from flowception.eval.job import EvalTask

Direction = Literal["min", "max", "info"]
_FVD = r"fvd\d+(?:r\d+g)?_\d+f(?:_\d+px)?"
DIRECTIONS: tuple[tuple[str, Direction], ...] = (
    # evaluation (``eval.job``; logged into the training run with an ``eval/`` prefix)
    (rf"{_FVD}", "min"),
    (rf"{_FVD}/(real_floor|static)", "info"),  # reference points from the real clips
    (rf"{_FVD}(/(real_floor|static))?/(num_real|num_fake|skipped_real|skipped_fake)", "info"),
    (r"real/.+", "info"),  # the data's value of a metric
    (r"vbench/(temporal_flickering|subject_consistency|background_consistency)", "max"),
    (r"proxy/(motion_smoothness_farneback|subject_consistency_i3d)", "max"),
    (r"proxy/dynamic_degree_farneback", "info"),  # read against real/: more is not better
    (r"length/wasserstein", "min"),
    (r"length/(mean_generated|mean_data|mean_difference_se)", "info"),  # against the data's mean
    (r"digits/(context_kept|identity_kept)", "max"),  # ``flowception demo`` (``eval.digits``)
    (r"digits/(classifier_accuracy|videos)", "info"),
    # training (``cluster.train_loop``)
    (r"loss|loss_velocity|loss_insertion", "min"),
    (r"time_per_step_s", "min"),
    (r"steps_per_s|visible_tokens_per_s|mfu_cpu", "max"),
    (r"grad_norm|lr|epoch|train_flops|visible_fraction|sample_length_mean", "info"),
    (r"diag/.+", "info"),
    (r"data/epoch/usable_fraction", "max"),
    (r"data/.+", "info"),
)
"""``(full-match regex, direction)`` for every metric the project logs: ``min`` / ``max``
pick the best value, ``info`` has none (counts, settings, reference points)."""
PLOTS_PER_PAGE = 12


EVAL_PREFIX = re.compile(
    r"eval/(?:(?:{})/)?".format("|".join(t for t in get_args(EvalTask) if t != "auto"))
)
"""How the training run names an evaluation's metrics: ``eval/<key>``, or
``eval/<task>/<key>`` for a task other than the training one (``eval.job.task_qualifier``)."""


def split_eval(metric: str) -> tuple[str, str]:
    """``(prefix, name)``: ``eval/unconditional/length/wasserstein`` ->
    ``("eval/unconditional/", "length/wasserstein")``; ``("", metric)`` for training metrics."""
    match = EVAL_PREFIX.match(metric)
    return (match.group(0), metric[match.end() :]) if match else ("", metric)


def direction(metric: str) -> Direction | None:
    """The metric's entry in :data:`DIRECTIONS` (``eval/`` and ``eval/<task>/`` prefixes
    ignored); None when unknown."""
    name = split_eval(metric)[1]
    for pattern, d in DIRECTIONS:
        if re.fullmatch(pattern, name):
            return d
    return None


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    """``experiment/run`` (``experiment/parent/run`` for a child run)."""
    final: dict[str, float]
    best: dict[str, float]
    history: dict[str, list[tuple[int, float]]]


def resolve_run(client, ref: str):
    """A run by id, by ``experiment/run`` name, or by a run name that is unique.

    Raises:
        ValueError: No run matches, or a bare name matches runs in several places (names them).
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    exps = {e.experiment_id: e.name for e in client.search_experiments()}
    wanted, name = list(exps), ref
    exp_name, sep, run_name = ref.rpartition("/")
    if sep and exp_name in exps.values():
        wanted, name = [k for k, v in exps.items() if v == exp_name], run_name
    runs = client.search_runs(
        wanted,
        filter_string=f"attributes.run_name = '{name}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ValueError(f"run {ref!r}: no MLflow run with that id, name or experiment/name")
    if len(runs) > 1:
        found = ", ".join(f"{label(client, r, exps)} ({r.info.run_id})" for r in runs[:5])
        raise ValueError(f"run {ref!r} is ambiguous: {found}; give a run id")
    return runs[0]


def label(client, run, exps: dict[str, str] | None = None) -> str:
    """``experiment/run``, or ``experiment/parent/run`` when the run has a parent run."""
    exp = (exps or {}).get(run.info.experiment_id)
    if exp is None:
        exp = client.get_experiment(run.info.experiment_id).name
    parts = [exp]
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        parts.append(client.get_run(parent).info.run_name or parent)
    parts.append(run.info.run_name or run.info.run_id)
    return "/".join(parts)


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
        d = direction(key)
        if d in ("min", "max"):
            best[key] = max(values) if d == "max" else min(values)
    return RunSummary(run.info.run_id, label(client, run), final, best, history)


def data_reference(final: dict[str, float], key: str) -> str:
    """The real-data reference of ``key`` in the same run (``-`` when there is none)."""
    prefix, name = split_eval(key)
    if re.fullmatch(_FVD, name):
        refs = [f"{k.rsplit('/', 1)[1]} {v:.4g}" for k, v in sorted(final.items())
                if k.startswith(prefix) and re.fullmatch(rf"{_FVD}/(real_floor|static)",
                                                         k.removeprefix(prefix))]  # fmt: skip
        return ", ".join(refs) or "-"
    if name == "length/mean_generated" and f"{prefix}length/mean_data" in final:
        return f"{final[f'{prefix}length/mean_data']:.4g}"
    real = final.get(f"{prefix}real/{name}")
    return f"{real:.4g}" if real is not None else "-"


def compare_runs(
    refs: Sequence[str],
    *,
    tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    out_dir: str | Path = "outputs/compare",
) -> tuple[str, Path]:
    """Markdown table (printed and written to ``compare.md``) and plot pages of the runs.

    Returns:
        The table and the first plot page (``metrics.png``; further pages
        ``metrics_2.png``, ... are listed under the table).
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    client = MlflowClient(uri)
    runs = [summarize(client, r, metrics) for r in refs]
    names = [r.name for r in runs]
    runs = [
        RunSummary(r.run_id, f"{r.name} ({r.run_id[:8]})", r.final, r.best, r.history)
        if names.count(r.name) > 1 else r
        for r in runs
    ]  # fmt: skip
    keys = sorted(set().union(*(r.final for r in runs)))
    if metrics is None:  # default: the metrics every run has
        keys = [k for k in keys if all(k in r.final for r in runs)]
    arrows = {"min": "↓", "max": "↑", "info": "·", None: "?"}
    header = "| metric | | " + " | ".join(f"{r.name} final | best | data" for r in runs) + " |"
    lines = [header, "|---|---|" + "---|---|---|" * len(runs)]
    for key in keys:
        cells = []
        for r in runs:
            if key not in r.final:
                cells.append("- | - | -")
                continue
            best = f"{r.best[key]:.4g}" if key in r.best else "-"
            cells.append(f"{r.final[key]:.4g} | {best} | {data_reference(r.final, key)}")
        lines.append(f"| {key} | {arrows[direction(key)]} | " + " | ".join(cells) + " |")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pages = plot_pages(runs, keys, out)
    lines.append("")
    lines.append("↓ lower is better, ↑ higher is better, · no best (counts, settings, references), "
                 "? direction unknown (no best); plots: "
                 + ", ".join(p.name for p in pages))  # fmt: skip
    table = "\n".join(lines)
    (out / "compare.md").write_text(table + "\n")
    return table, pages[0]


def plot_pages(runs: Sequence[RunSummary], keys: Sequence[str], out: Path) -> list[Path]:
    """Every key over steps, :data:`PLOTS_PER_PAGE` panels per PNG page."""
    from flowception.eval.visualize import pyplot

    plt = pyplot()
    chunks = [keys[i : i + PLOTS_PER_PAGE] for i in range(0, len(keys), PLOTS_PER_PAGE)] or [[]]
    pages = []
    for page, shown in enumerate(chunks, start=1):
        cols = min(3, max(1, len(shown)))
        rows = (len(shown) + cols - 1) // cols or 1
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
        for ax, key in zip(axes.flat, shown):
            for r in runs:
                if key in r.history:
                    steps, values = zip(*r.history[key])
                    ax.plot(steps, values, marker="o" if len(steps) < 30 else None,
                            markersize=3, label=r.name)  # fmt: skip
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(shown) :]:
            ax.axis("off")
        if shown:
            axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        path = out / ("metrics.png" if page == 1 else f"metrics_{page}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        pages.append(path)
    return pages
