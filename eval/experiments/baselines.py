"""``baselines``: Flowception against full-sequence flow and autoregressive generation.

Every arm trains the same tiny DiT on the same Moving MNIST shards for the same steps
(image-to-video, spec section 10), then goes through the same eval job: FVD (few clips:
non-standard), VBench-style scores, the length law, and the training FLOPs the train
loop counted (``model.flops``) with its time per step. The fixed-length baselines
generate each test video's real length (``data_lengths=true``); Flowception picks its own.

    flowception experiment baselines            # 4 arms x 300 steps
    flowception experiment baselines --quick
    flowception experiment baselines arms=[flowception,autoregressive_causal] steps=100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowception.eval.experiments.arms import (
    assets,
    bar_plot,
    eval_arm,
    train_arm,
    training_columns,
)
from flowception.eval.experiments.runner import ExperimentContext

TITLE = "Flowception vs full-sequence vs autoregressive (same data, steps, model)"
NEEDS_RAY = True
# arm -> training overrides (spec section 10; causal = block-causal attention)
ARMS: dict[str, list[str]] = {
    "flowception": ["method.method=flowception"],
    "full_sequence": ["method.method=full_sequence"],
    "autoregressive": ["method.method=autoregressive"],
    "autoregressive_causal": ["method.method=autoregressive", "model.attention=causal"],
}


def run(ctx: ExperimentContext) -> list[dict[str, Any]]:
    """Train and evaluate every arm; one row per arm."""
    a = assets(ctx)
    rows = []
    for arm in ctx.cfg.pick_arms(tuple(ARMS)):
        result = train_arm(ctx, a, arm, ARMS[arm])
        row: dict[str, Any] = {"arm": arm, **training_columns(ctx, result)}
        row.update(eval_arm(ctx, a, result.checkpoint, arm, result.mlflow_run_id,
                            ["data_lengths=true"]))  # fmt: skip
        ctx.log_metrics(result.mlflow_run_id, {f"experiment/{k}": v for k, v in row.items()},
                        close=False)  # fmt: skip
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    return bar_plot(rows, path, label="arm", title=TITLE, columns=(
        "fvd", "train_flops", "time_per_step_s", "len_w1", "subject"))  # fmt: skip
