"""``local-attention``: a frame window ``W`` (spec section 7) for Flowception and full sequence.

Each arm trains with ``model.window=W`` (a frame attends to frames of its video whose
visible rank differs by at most ``W``; ``full`` = no window) and is evaluated like the
baselines. The table adds each metric's change against the same method at full
attention (the paper: Flowception degrades much less than full sequence as W shrinks).

    flowception experiment local-attention                 # W in {1, 2, 4, full} x 2 methods
    flowception experiment local-attention --quick
    flowception experiment local-attention arms=[flowception:1,flowception:full]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flowception.eval.experiments.arms import assets, eval_arm, train_arm, training_columns
from flowception.eval.experiments.runner import ExperimentContext

TITLE = "Local attention: metric change vs full attention, per method"
NEEDS_RAY = True
METHODS = ("flowception", "full_sequence")
WINDOWS = ("1", "2", "4", "full")
ARMS = tuple(f"{m}:{w}" for m in METHODS for w in WINDOWS)
DELTAS = ("fvd", "subject", "len_w1")


def run(ctx: ExperimentContext) -> list[dict[str, Any]]:
    """Train and evaluate every ``method:W`` arm; add deltas against ``method:full``."""
    a = assets(ctx)
    rows = []
    for arm in ctx.cfg.pick_arms(ARMS):
        method, window = arm.split(":")
        overrides = [
            f"method.method={method}",
            f"model.window={'none' if window == 'full' else window}",
        ]
        result = train_arm(ctx, a, arm, overrides)
        row: dict[str, Any] = {"method": method, "window": window, **training_columns(ctx, result)}
        row.update(eval_arm(ctx, a, result.checkpoint, arm, result.mlflow_run_id,
                            ["data_lengths=true"]))  # fmt: skip
        rows.append((result.mlflow_run_id, row))
    full = {r["method"]: r for _, r in rows if r["window"] == "full"}
    for run_id, row in rows:
        ref = full.get(row["method"])
        for key in DELTAS:
            row[f"d_{key}"] = row[key] - ref[key] if ref else math.nan
        ctx.log_metrics(run_id, {f"experiment/{k}": v for k, v in row.items()}, close=False)
    if not full:
        ctx.notes.append("no 'full' arm ran: deltas against full attention are empty")
    return [r for _, r in rows]


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Metrics against window size, one line per method."""
    from flowception.eval.visualize import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(DELTAS), figsize=(3.4 * len(DELTAS), 3.2), squeeze=False)
    order = {w: i for i, w in enumerate(WINDOWS)}
    for ax, key in zip(axes[0], DELTAS):
        for method in METHODS:
            pts = sorted((order[r["window"]], r[key]) for r in rows if r["method"] == method)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        ax.set_xticks(range(len(WINDOWS)), [f"W={w}" for w in WINDOWS], fontsize=8)
        ax.set_title(key, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(TITLE, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
