"""The paper's experiments as tracked jobs (``flowception experiment NAME``).

One module per experiment, each exposing ``run(ctx: ExperimentContext) -> list[dict]``
(the table rows, one per arm); ``eval.experiments.runner`` does the rest: services,
the parent MLflow run, the table, the plot, the output folder.
"""

from __future__ import annotations

# experiment name -> module under eval.experiments
EXPERIMENTS: dict[str, str] = {
    "schedule": "flowception.eval.experiments.schedule",
    "baselines": "flowception.eval.experiments.baselines",
    "insertion-order": "flowception.eval.experiments.insertion_order",
    "local-attention": "flowception.eval.experiments.local_attention",
    "cost": "flowception.eval.experiments.cost",
}
