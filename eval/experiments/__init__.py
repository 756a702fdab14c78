"""The paper's experiments as tracked jobs (``flowception experiment NAME``).

One module per experiment, each exposing ``run(ctx: ExperimentContext) -> list[dict]``
(the table rows, one per arm); ``eval.experiments.runner`` does the rest: services,
the parent MLflow run, the table, the plot, the output folder.
"""

from __future__ import annotations

# experiment name -> module under eval.experiments
EXPERIMENTS: dict[str, str] = {
    "schedule": "eval.experiments.schedule",
    "baselines": "eval.experiments.baselines",
    "insertion-order": "eval.experiments.insertion_order",
    "local-attention": "eval.experiments.local_attention",
    "cost": "eval.experiments.cost",
}
