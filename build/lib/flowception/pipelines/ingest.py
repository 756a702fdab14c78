"""Handing the dataset to Ray Train workers: every sample once per epoch, in a
deterministic split.

Ray Train's default ``DataConfig`` splits with ``streaming_split(n, equal=True)``,
which drops rows to give every worker the same count. Frame-budget batches already
differ in size between workers, so equal counts buy nothing and cost samples. This
config splits with ``equal=False`` and ``preserve_order=True``: Ray Data's output
splitter then hands each block to the worker with the fewest rows so far, in block
order, so the assignment depends only on the data, the seed and the world size.

Driver::

    from flowception.pipelines.dataset import build_dataset
    from flowception.pipelines.ingest import exactly_once_config

    trainer = TorchTrainer(loop, datasets={"train": build_dataset(cfg.data, cursor=c)},
                           dataset_config=exactly_once_config(), ...)

Worker: ``VideoBatchStream(ray.train.get_dataset_shard("train"), cfg.data)``.
"""

from __future__ import annotations

from typing import Any

import ray.train


class ExactlyOnceDataConfig(ray.train.DataConfig):
    """``ray.train.DataConfig`` that splits with ``equal=False`` and preserves order."""

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """One ``DataIterator`` per rank and dataset (see the module docstring)."""
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        to_split = (
            set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        )
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            options = self._resolve_execution_options(name)
            options.preserve_order = True
            ds.context.execution_options = options
            if name in to_split:
                for rank, split in enumerate(split_for_workers(ds, world_size)):
                    output[rank][name] = split
            else:
                for rank in range(world_size):
                    output[rank][name] = ds.iterator()
        return output


def split_for_workers(ds: Any, n: int) -> list[Any]:
    """``n`` disjoint iterators covering ``ds`` once per pass (``streaming_split``, unequal)."""
    ds.context.execution_options.preserve_order = True
    return ds.streaming_split(n, equal=False)


def exactly_once_config(datasets_to_split: str | list[str] = "all") -> ExactlyOnceDataConfig:
    """The ``dataset_config`` to give ``TorchTrainer`` for video datasets."""
    return ExactlyOnceDataConfig(datasets_to_split=datasets_to_split, enable_shard_locality=False)
