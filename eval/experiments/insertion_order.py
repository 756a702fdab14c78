"""``insertion-order``: learned insertion rates against the prescribed orders of spec E25.

One Flowception model (trained here, or ``checkpoint=...``) is sampled unconditionally
with its learned rates (E19) and with the fixed orders left to right, hierarchical and
random; a prescribed order reveals each test video's real length ``L*`` (the eval job's
``length`` column), the learned arm chooses its own. Same eval metrics for every arm.

    flowception experiment insertion-order
    flowception experiment insertion-order --quick
    flowception experiment insertion-order checkpoint=outputs/experiments/baselines/runs/flowception-300-s0
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

TITLE = "Insertion order: learned rates vs prescribed orders (spec E25)"
NEEDS_RAY = True
ARMS = ("learned", "left_to_right", "hierarchical", "random")


def run(ctx: ExperimentContext) -> list[dict[str, Any]]:
    """One training (or the given checkpoint), one evaluation per insertion rule."""
    a = assets(ctx)
    arms = ctx.cfg.pick_arms(ARMS)
    checkpoint, train_cols = ctx.cfg.checkpoint, {}
    if checkpoint is None:
        # unconditional training: the prescribed orders start from noise frames only
        result = train_arm(ctx, a, "insertion-order-model", [
            "method.task=unconditional", "method.uncond_prob=0.0"], role="train")  # fmt: skip
        checkpoint, train_cols = result.checkpoint, training_columns(ctx, result)
    rows = []
    for arm in arms:
        run_id = ctx.child_run(arm, {"insertion_rule": arm, "checkpoint": checkpoint})
        row: dict[str, Any] = {"insertion_rule": arm}
        row.update(eval_arm(ctx, a, checkpoint, arm, run_id,
                            ["task=unconditional", f"sampler.insertion_rule={arm}"]))  # fmt: skip
        ctx.log_metrics(run_id, {f"experiment/{k}": v for k, v in row.items()})
        rows.append(row)
    if train_cols:
        ctx.notes.append("model: " + ", ".join(f"{k}={v:.4g}" for k, v in train_cols.items()
                                               if isinstance(v, float)))  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    return bar_plot(rows, path, label="insertion_rule", title=TITLE,
                    columns=("fvd", "subject", "smoothness", "len_w1"))  # fmt: skip
