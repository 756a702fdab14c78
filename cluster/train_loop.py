"""The per-worker training loop (one Ray Train worker = one DeepSpeed rank).

Read it as four steps: ``[1] data shard``, ``[2] DeepSpeed engine``, ``[3] step``,
``[4] checkpoint + report``. ``cluster.launch`` builds the trainer that runs it; the
config arrives as ``{"train": TrainConfig.to_dict(), "run": RunInfo}``.

Exact resume: the checkpoint holds the engine (weights, ZeRO optimiser shards, LR
schedule), the EMA, every rank's RNG states and data cursor, so a resumed run sees
the same batches and draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from flowception.cluster import checkpoint, storage
from flowception.cluster.config import TrainConfig
from flowception.cluster.deepspeed_config import deepspeed_config, skip_unused_ops
from flowception.cluster.faults import held, maybe_die
from flowception.cluster.lr import lr_scheduler
from flowception.model.flops import gemm_rate, training_flops

log = logging.getLogger("flowception.train")

# Per-step numbers summed over ranks with one all-reduce (order matters).
SUMMED = (
    "finite", "loss", "loss_velocity", "loss_insertion", "visible_frames", "valid_frames", "flops",
)  # fmt: skip
# Insertion diagnostics of rank 0's batches (model.training stats), averaged per log window.
DIAGNOSTICS = {
    "rate_mean": "diag/rate_mean", "rate_p10": "diag/rate_p10", "rate_p50": "diag/rate_p50",
    "rate_p90": "diag/rate_p90", "expected_length_mean": "diag/expected_length",
    "data_length_mean": "diag/data_length", "velocity_mask_share": "diag/velocity_mask_share",
    "rate_mask_share": "diag/rate_mask_share",
}  # fmt: skip
COLLAPSE = 0.8  # warn when the expected final length falls below this share of the data's


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG this rank draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _update_ema(ema: Any, engine: Any, zero_stage: int) -> None:
    """EMA after an optimiser step; ZeRO-3 partitions parameters, so gather them first."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            ema.update(engine.module)
    else:
        ema.update(engine.module)  # ZeRO 0-2 keep the full weights on every rank


def _warn_rate_collapse(metrics: dict[str, float], step: int) -> None:
    """Under-insertion: the rate head predicts far fewer frames than the data has."""
    expected, data = metrics.get("diag/expected_length"), metrics.get("diag/data_length")
    if expected is not None and data and expected < COLLAPSE * data:
        log.warning(
            "step %d: insertion rate collapsing (expected final length %.2f vs data %.2f frames); "
            "sample with insertion guidance > 1 (method.insertion_guidance / eval sampler.insertion_guidance)",
            step, expected, data,
        )  # fmt: skip


def synced(batches: Iterator, device: torch.device) -> Iterator:
    """Yield batches while *every* rank has one (ranks' shards may differ by a batch)."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        more = torch.tensor([0.0 if batch is None else 1.0], device=device)
        dist.all_reduce(more, op=dist.ReduceOp.MIN)
        if more.item() == 0:
            return
        yield batch


def _data_counts(
    stream: Any, rank: int, device: Any, cfg: TrainConfig, tracker: Any, logged: set[int]
) -> dict[str, float]:
    """Bad data, end to end: every rank's counts summed; epochs every rank finished are
    checked against ``data.min_usable_fraction`` and logged per epoch (MLflow step = epoch)."""
    from flowception.pipelines import ingest

    epochs = cfg.data.epochs
    vec = torch.tensor(ingest.count_vector(stream.cursor, epochs), dtype=torch.float64)
    done = torch.tensor([float(stream.cursor.position(rank).epoch)], dtype=torch.float64)
    dist.all_reduce(vec := vec.to(device))
    dist.all_reduce(done := done.to(device), op=dist.ReduceOp.MIN)
    vector = vec.cpu().tolist()
    for epoch in range(min(int(done.item()), epochs)):
        counts = ingest.epoch_counts(vector, epoch)
        share = ingest.check_usable(counts, epoch, cfg.data.min_usable_fraction, cfg.data.shards)
        if rank == 0 and tracker and epoch not in logged:
            logged.add(epoch)
            per_epoch = {f"data/epoch/{k}": float(v) for k, v in counts.items()}
            tracker.log_metrics({**per_epoch, "data/epoch/usable_fraction": share}, epoch)
    return ingest.data_metrics(vector, epochs)


def _upload_fn(local: Path, step: int, rank: int, endpoint: str | None) -> Any:
    """``checkpoint_upload_fn`` for ``ray.train.report``: copy ``local``, manifest last,
    through this worker's own filesystem (the normal retry policy, not the controller's
    longer one: ``cluster.storage``); an error after the retries fails the attempt."""
    import ray.train

    def upload(_: Any, dir_name: str) -> Any:
        ctx = ray.train.get_context().get_storage()
        dest = ctx.build_checkpoint_path_from_name(dir_name)
        fs, _ = storage.resolve(storage.uri_of(ctx.storage_filesystem, dest), endpoint)
        names = storage.file_sizes(storage.pafs.LocalFileSystem(), str(local))
        with held("upload", step, rank):
            storage.upload_files(local, fs, dest, names, last=checkpoint.MANIFEST)
        return ray.train.Checkpoint(path=dest, filesystem=ctx.storage_filesystem)

    return upload


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``config["train"]`` on this rank; see the module docstring."""
    import deepspeed
    import ray.train
    import ray.train.torch

    from flowception.model.dit import DiT
    from flowception.model.ema import EMA
    from flowception.model.generate import generate
    from flowception.model.schedule import mean_insertion_target
    from flowception.model.training import calibration_warnings, rate_calibration, training_step
    from flowception.pipelines.ingest import DataCursor, UnusableDataError, worker_stream

    cfg = TrainConfig.from_dict(config["train"])
    run = config["run"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    endpoint = cfg.cluster.storage_endpoint_url
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    # [1] data shard: the dataset left out what the checkpoint's cursors consumed
    ckpt = checkpoint.resume_point(run["run_uri"], cfg.checkpoint.resume_from, endpoint)
    start = DataCursor.from_dict(checkpoint.merged_cursor(ckpt, endpoint)) if ckpt else DataCursor()
    stream = worker_stream(cfg.data, start, rank=rank, world=world)  # re-split if world changed

    # [2] DeepSpeed engine (same init on every rank), EMA, restore
    torch.manual_seed(cfg.seed)
    # rate head starts at the training law's mean k for the configured clip length (issue 17)
    net = DiT(cfg.model, rate_init=mean_insertion_target(cfg.data.num_frames, cfg.method))
    ema = EMA(net, cfg.optim.ema_decay)
    ds_config = deepspeed_config(cfg, world_size=world, use_gpu=cfg.cluster.use_gpu)
    if ckpt and checkpoint.needs_universal(checkpoint.manifest_of(ckpt, endpoint), world):
        ds_config["checkpoint"] = {"load_universal": True}  # ZeRO partitions re-cut for `world`
    skip_unused_ops()
    engine, *_ = deepspeed.initialize(
        model=net,
        model_parameters=[p for p in net.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=partial(lr_scheduler, optim=cfg.optim, total_steps=cfg.steps),
        dist_init_required=False,
    )
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + rank)
    step = 0
    flops_total = 0.0  # training FLOPs of the whole run (continued from the checkpoint)
    if ckpt:  # a private copy, removed whether the restore works or not
        with checkpoint.fetched(ckpt, endpoint, copy=True, prefix="flowception-resume-") as local:
            step, rng, _ = checkpoint.restore_rank(
                engine, ema=ema, local_dir=local, rank=rank, world_size=world
            )
            manifest = json.loads((local / checkpoint.MANIFEST).read_text())
            flops_total = float(manifest.get("train_flops", 0.0))
        if rng is not None:
            set_rng_state(rng, generator)
        else:  # a rank the checkpoint did not have (resized run): fresh, step-dependent
            generator.manual_seed(cfg.seed * 100_003 + rank + 1_000_003 * step)
        if rank == 0:
            log.info("resumed from %s at step %d", ckpt, step)
    tracker = None
    if rank == 0 and run.get("mlflow_run_id"):
        from flowception.cluster.tracking import Tracker, spool_dir

        spool = spool_dir(run["run_uri"], run["run_name"])  # nothing lost while MLflow is away
        tracker = Tracker(run["mlflow_uri"], run["mlflow_run_id"], spool=spool)

    # [3] step
    tokens_per_frame = cfg.model.tokens_per_frame
    window = torch.zeros(len(SUMMED), dtype=torch.float64)
    t_window, steps_window, micro = time.perf_counter(), 0, 0
    last: dict[str, float] = {}
    diag_sums: dict[str, float] = {}
    diag_counts: dict[str, int] = {}
    calib_sums: dict[str, float] = {}  # rate_lambda_sum/<task>, rate_k_sum/<task>
    # fp32 GEMM rate summed over ranks (each with its threads): the denominator of mfu_cpu
    peak = torch.tensor([0.0 if cfg.cluster.use_gpu else gemm_rate()], dtype=torch.float64)
    dist.all_reduce(peak := peak.to(device))
    logged: set[int] = set()  # epochs whose data counts went to MLflow
    for batch in synced(stream, device) if step < cfg.steps else ():
        labels = batch.labels.to(device) if cfg.model.num_classes else None
        out = training_step(
            engine,
            batch.videos.to(device),
            batch.lengths.to(device),
            method=cfg.method,
            generator=generator,
            labels=labels,
            rate_head=cfg.model.rate_head,
        )
        loss = out.loss
        sums = torch.tensor(
            [
                float(torch.isfinite(loss.total)),
                loss.total.item(),
                loss.velocity.item(),
                loss.insertion.item(),
                out.stats["visible_frames"],
                out.stats["valid_frames"],
                training_flops(out.index.cu_seqlens, cfg.model)["total"],
            ],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(sums)
        sums = sums.cpu()
        if sums[0] < world:  # every rank stops, naming the step
            raise FloatingPointError(
                f"non-finite loss at step {step + 1} (this rank: {loss.total.item()}, "
                f"keys {batch.keys[:4]})"
            )
        lr = float(engine.get_lr()[0])  # the rate this step uses (the scheduler moves on in step)
        engine.backward(loss.total)
        engine.step()
        micro += 1
        window += sums
        flops_total += sums[6].item()
        for key in DIAGNOSTICS.keys() & out.stats.keys():
            diag_sums[key] = diag_sums.get(key, 0.0) + out.stats[key]
            diag_counts[key] = diag_counts.get(key, 0) + 1
        for key in [k for k in out.stats if k.startswith(("rate_lambda_sum/", "rate_k_sum/"))]:
            calib_sums[key] = calib_sums.get(key, 0.0) + out.stats[key]
        if micro % cfg.optim.grad_accum_steps:
            continue
        step += 1
        steps_window += 1
        _update_ema(ema, engine, cfg.deepspeed.zero_stage)
        maybe_die("step", step, rank)

        if step % cfg.tracking.log_every == 0 or step == cfg.steps:
            dt = time.perf_counter() - t_window
            n = max(micro, 1) * world
            grad_norm = engine.get_global_grad_norm()
            last = {
                "loss": window[1].item() / n,
                "loss_velocity": window[2].item() / n,
                "loss_insertion": window[3].item() / n,
                "visible_fraction": window[4].item() / max(window[5].item(), 1.0),
                "visible_tokens_per_s": window[4].item() * tokens_per_frame / dt,
                "steps_per_s": steps_window / dt,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "epoch": float(batch.epoch),
                "time_per_step_s": dt / max(steps_window, 1),
            }
            last["train_flops"] = flops_total
            if peak.item() > 0:
                last["mfu_cpu"] = window[6].item() / dt / peak.item()
            last.update(rate_calibration(calib_sums))
            calib_sums.clear()
            last.update({DIAGNOSTICS[k]: v / diag_counts[k] for k, v in diag_sums.items()})
            last.update(_data_counts(stream, rank, device, cfg, tracker, logged))
            diag_sums.clear()
            diag_counts.clear()
            if rank == 0:
                _warn_rate_collapse(last, step)
                for message in calibration_warnings(last, step, cfg.steps):
                    log.warning(message)
                log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in last.items()))
                if tracker:
                    tracker.log_metrics(last, step)
            window.zero_()
            t_window, steps_window, micro = time.perf_counter(), 0, 0

        every = cfg.tracking.sample_every
        if rank == 0 and tracker and every and (step % every == 0 or step == cfg.steps):
            _log_samples(cfg, ema, tracker, step, DiT, generate)

        # [4] checkpoint + report (every rank writes its shard; manifest from rank 0)
        if step % cfg.checkpoint.every_steps == 0 or step == cfg.steps:
            _save_and_report(cfg, engine, ema, stream, generator, step, rank, world, last,
                             flops_total)  # fmt: skip
        if step >= cfg.steps:
            break

    summary = _data_counts(stream, rank, device, cfg, tracker, logged)  # raises on unusable data
    if rank == 0:
        log.info("data: %s", " ".join(f"{k}={v:g}" for k, v in summary.items() if v))
    if step == 0:
        raise UnusableDataError(f"{cfg.data.shards}: the data yielded no batch ({summary})")
    if step < cfg.steps and rank == 0:
        log.warning(
            "data ran out at step %d of %d (data.epochs=%d)", step, cfg.steps, cfg.data.epochs
        )
    if step % cfg.checkpoint.every_steps and step != cfg.steps:
        _save_and_report(cfg, engine, ema, stream, generator, step, rank, world, last,
                         flops_total)  # fmt: skip
    if tracker:
        tracker.close(run_uri=run["run_uri"], endpoint_url=endpoint)  # FINISHED once all arrived


def _save_and_report(
    cfg: TrainConfig,
    engine: Any,
    ema: Any,
    stream: Any,
    generator: torch.Generator,
    step: int,
    rank: int,
    world: int,
    metrics: dict[str, float],
    flops_total: float,
) -> None:
    """Stage this rank's files, agree on the manifest, rename, report (upload)."""
    import ray.train

    staged = checkpoint.stage_rank_files(
        engine,
        ema=ema,
        cfg=cfg,
        step=step,
        rank=rank,
        rng=rng_state(generator),
        cursor=stream.cursor.to_dict(),
    )
    maybe_die("save", step, rank)
    files = checkpoint.describe_staged(staged)  # {name: {size, sha256}}
    everyone: list[dict[str, Any]] = [{} for _ in range(world)]
    dist.all_gather_object(everyone, files)
    if rank == 0:
        merged: dict[str, Any] = {}
        for part in reversed(everyone):  # rank 0's copy wins for shared names
            merged.update(part)
        checkpoint.write_manifest(staged, merged, cfg=cfg, step=step, world_size=world,
                                  extra={"train_flops": flops_total})  # fmt: skip
    final = checkpoint.finalize_local(staged)
    if rank != 0:  # a name every rank writes (DeepSpeed's "latest") is uploaded by rank 0 only
        for name in everyone[0]:
            if name in files:
                (final / name).unlink()
    try:
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(str(final)),
            checkpoint_dir_name=checkpoint.step_dir_name(step),
            checkpoint_upload_fn=_upload_fn(final, step, rank, cfg.cluster.storage_endpoint_url),
        )
    finally:
        shutil.rmtree(final.parent, ignore_errors=True)


def _log_samples(
    cfg: TrainConfig, ema: Any, tracker: Any, step: int, dit: Any, generate: Any
) -> None:
    """Rank 0: draw a few videos from the EMA weights and log them as artifacts."""
    from flowception.cluster.videos import write_video

    net = dit(cfg.model)
    ema.copy_to(net)
    net.eval()
    out = generate(
        net,
        method=cfg.method,
        num_videos=cfg.tracking.num_samples,
        generator=torch.Generator().manual_seed(cfg.seed + step),
        num_steps=cfg.tracking.sample_steps,
    )
    videos = out.videos
    metrics = {"sample_length_mean": float(np.mean([len(v) for v in out.videos]))}
    if cfg.data.vae != "none":  # latents: decode with the run's VAE (latent frames logged too)
        codec = _vae(cfg)
        videos = [codec.decode(v) for v in out.videos]  # list of (T, C, H, W)
        metrics["sample_video_length_mean"] = float(np.mean([len(v) for v in videos]))
    with tempfile.TemporaryDirectory(prefix="flowception-samples-") as folder:
        for i, video in enumerate(videos):  # the tracker keeps its own copy (its spool)
            path = write_video(video, Path(folder) / f"sample_{i}", cfg.tracking.video_format)
            tracker.log_artifact(path, f"samples/{checkpoint.step_dir_name(step)}")
    tracker.log_metrics(metrics, step)


_VAES: dict[tuple[str, str], Any] = {}


def _vae(cfg: TrainConfig) -> Any:
    """Rank 0's VAE for decoding samples (loaded once, on the CPU like the sampler)."""
    from flowception.pipelines.latents import VaeCodec

    key = (cfg.data.vae, str(cfg.data.vae_dir))
    if key not in _VAES:
        _VAES[key] = VaeCodec(cfg.data.vae, str(cfg.data.vae_dir), "cpu")
    return _VAES[key]
