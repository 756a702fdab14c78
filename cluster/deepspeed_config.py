"""The DeepSpeed JSON, built from the config by one pure function.

    ds = deepspeed_config(cfg, world_size=16, use_gpu=True)
    engine, *_ = deepspeed.initialize(model=net, model_parameters=params, config=ds, ...)

Batch sizes: a batch is cut by a frame budget (``data.frame_budget``), so the number
of videos varies; DeepSpeed only uses its batch sizes for bookkeeping and requires
``train_batch_size == micro * grad_accum * world_size``, which holds by construction
with ``micro = data.max_batch_size``.
"""

from __future__ import annotations

from typing import Any

from flowception.cluster.config import TrainConfig


def skip_unused_ops() -> None:
    """Keep DeepSpeed from compiling an op that training never calls.

    On the CPU, DeepSpeed's torch backend JIT-compiles its shared-memory all-reduce
    (``deepspeed_shm_comm``, used only by DeepSpeed-Inference's ``inference_all_reduce``)
    when a process first initialises: a C++ build of about a minute on both cores of
    this machine, on every fresh node or container (its cache is ``~/.cache``), and again
    whenever processes with different build commands share that cache. Marking the op
    incompatible makes the backend skip it (DeepSpeed keeps edits to this dict). Call it
    before ``deepspeed.initialize``.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def resolve_precision(cfg: TrainConfig, use_gpu: bool) -> str:
    """``"bf16"`` or ``"fp32"``: ``auto`` means bf16 on GPU and fp32 on CPU."""
    if cfg.deepspeed.precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return cfg.deepspeed.precision


def deepspeed_config(cfg: TrainConfig, *, world_size: int, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for ``deepspeed.initialize(config=...)``.

    Args:
        cfg: the training config (``optim``, ``deepspeed``, ``data`` sections are read).
        world_size: number of ranks (Ray Train workers).
        use_gpu: GPU workers (bf16 under ``precision=auto``, optional offload).

    Returns:
        A JSON-serialisable dict: AdamW optimiser (``torch_adam``: no compiled ops
        needed), ZeRO section, precision, gradient clipping, consistent batch sizes.
        The learning-rate schedule is a ``torch`` ``LambdaLR`` passed separately
        (``cluster.lr``), so the ``optimizer.params.lr`` here is the peak rate.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be >= 1")
    ds, optim = cfg.deepspeed, cfg.optim
    precision = resolve_precision(cfg, use_gpu)
    micro = cfg.data.max_batch_size
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(
            overlap_comm=ds.overlap_comm and use_gpu,
            contiguous_gradients=True,
            reduce_scatter=True,
            reduce_bucket_size=ds.bucket_size,
            allgather_bucket_size=ds.bucket_size,
        )
    if ds.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=ds.bucket_size,
            stage3_param_persistence_threshold=10_000,
            # export_weights consolidates the shards itself (zero_to_fp32).
            stage3_gather_16bit_weights_on_model_save=False,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": micro * optim.grad_accum_steps * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": optim.grad_accum_steps,
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": ds.steps_per_print,
        "wall_clock_breakdown": False,
    }
