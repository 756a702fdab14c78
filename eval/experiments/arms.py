"""Train and evaluate one arm through the project's own entry points.

Training is ``cluster.launch.launch`` on ``train_config`` plus overrides (2 Ray Train
workers, DeepSpeed ZeRO-2 on CPU); evaluation is ``eval.job.run_eval`` (real I3D, FVD
with few samples flagged non-standard, VBench-style metrics, length law). Data and
I3D weights come from the demo's helpers (``flowception.eval.demo.make_data``, ``i3d_weights``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowception.eval.experiments.config import ROOT
from flowception.eval.experiments.runner import ExperimentContext

PROTOCOL = "fvd_exp_10f"
"""Label (param) of the experiments' FVD protocol: 10-frame clips (Moving MNIST has 10-16
frames); the metric key is ``fvd.key`` (the clip counts actually used)."""
TRAIN_METRICS = ("train_flops", "time_per_step_s", "diag/rate_mean", "diag/expected_length",
                 "diag/data_length", "diag/velocity_mask_share", "diag/rate_mask_share")  # fmt: skip


@dataclass(frozen=True)
class Assets:
    """Shards (``train``, ``test``) and the converted I3D weights."""

    data: dict[str, str]
    i3d: str


def assets(ctx: ExperimentContext) -> Assets:
    """The given shards, or Moving MNIST sized by the config (cached per size), and I3D."""
    from flowception.eval.demo import DemoPlan, i3d_weights, make_data

    cfg = ctx.cfg
    root = Path(cfg.out).resolve()
    plan = DemoPlan(train_videos=cfg.train_videos, test_videos=cfg.test_videos, steps=cfg.steps,
                    eval_videos=cfg.eval_videos, sample_videos=0, checkpoint_every=cfg.steps)  # fmt: skip
    if cfg.shards:
        test = cfg.test_shards or re.sub(r"train/?$", "test", cfg.shards)
        data = {"train": cfg.shards, "test": test}
    else:
        data = make_data(root / "data" / f"mm-{cfg.train_videos}-{cfg.test_videos}", plan)
    i3d = cfg.detector or str(i3d_weights(root / "assets"))
    return Assets(data=data, i3d=i3d)


def train_arm(
    ctx: ExperimentContext, a: Assets, arm: str, overrides: list[str], *, role: str = "arm"
):
    """Train one arm; its MLflow run becomes a child of the parent. Returns ``TrainResult``."""
    from flowception.cluster.checkpoint import resolve_checkpoint
    from flowception.cluster.config import load_config
    from flowception.cluster.launch import launch

    cfg = ctx.cfg
    epochs = 1 + (cfg.steps * 64) // (cfg.train_videos * 10)  # 2 workers x 32 frames a step
    slug = arm.replace(":", "-").replace("/", "-")
    train_cfg = load_config(ROOT / cfg.train_config, [
        f"steps={cfg.steps}", f"seed={cfg.seed}", f"data.shards={a.data['train']}",
        "data.num_frames=16", f"data.epochs={epochs}", "method.max_frames=16",
        "method.num_frames=16", "method.task=image_to_video", "method.uncond_prob=0.3",
        f"checkpoint.every_steps={cfg.steps}", f"cluster.storage_path={ctx.folder / 'runs'}",
        f"cluster.name={slug}-{cfg.steps}-s{cfg.seed}", f"tracking.tracking_uri={ctx.tracking_uri}",
        f"tracking.experiment={cfg.experiment}", "tracking.sample_every=0",
        *overrides, *cfg.train,
    ])  # fmt: skip
    run_dir = f"{train_cfg.cluster.storage_path}/{train_cfg.run_name()}"
    earlier = resolve_checkpoint(run_dir, train_cfg.cluster.storage_endpoint_url)
    if earlier:  # the same arm of an earlier invocation with this ``out``: launch continues it
        ctx.notes.append(f"{arm}: continued the training run {run_dir} from {earlier}; "
                         "train_s counts this invocation only")  # fmt: skip
    print(f"  train {arm}: {cfg.steps} steps", flush=True)
    result = launch(train_cfg)
    if not result.checkpoint:
        raise RuntimeError(f"{cfg.name}/{arm}: training left no checkpoint in {result.run_uri}")
    if result.mlflow_run_id:
        ctx.adopt(result.mlflow_run_id, arm, role=role)
    return result


def training_columns(ctx: ExperimentContext, result, model_cfg=None) -> dict[str, Any]:
    """Training FLOPs and time per step from the training run's MLflow history.

    ``train_flops`` is the train loop's cumulative counter (``model.flops``); when the
    run did not log it the column is NaN and a note says so.
    """
    client = ctx.client
    out: dict[str, Any] = {"train_s": round(result.seconds, 1)}
    logged = client.get_run(result.mlflow_run_id).data.metrics if result.mlflow_run_id else {}
    for key in TRAIN_METRICS:
        out[key.replace("diag/", "")] = float(logged[key]) if key in logged else math.nan
    if "train_flops" not in logged:
        note = "train_flops not logged by this training loop: FLOPs column left empty"
        if note not in ctx.notes:
            ctx.notes.append(note)
    if "time_per_step_s" not in logged:
        out["time_per_step_s"] = result.seconds / max(ctx.cfg.steps, 1)
    out["loss"] = float(logged.get("loss", math.nan))
    return out


def eval_arm(
    ctx: ExperimentContext, a: Assets, checkpoint: str, arm: str, run_id: str, overrides: list[str]
) -> dict[str, Any]:
    """``eval.job.run_eval`` logged under ``run_id``; returns the table columns.

    When too few generated videos reach the clip length for FVD, the arm is evaluated
    again without FVD (the column reads n/a) rather than failing the experiment.
    """
    from flowception.eval.job import load_job_config, run_eval

    cfg = ctx.cfg
    slug = arm.replace(":", "-").replace("/", "-")
    base = [
        f"eval.detector={a.i3d}", f"eval.protocol.name={PROTOCOL}", "eval.protocol.num_frames=10",
        f"num_videos={cfg.eval_videos}", "batch_size=4", f"shards={a.data['test']}",
        f"output_dir={ctx.folder / 'eval' / slug}", f"tracking_uri={ctx.tracking_uri}",
        f"run_id={run_id}", f"sampler.num_steps={cfg.sample_steps}", f"seed={cfg.seed}",
        "num_sample_videos=4", f"eval.reference_cache={ctx.folder / 'reference'}",
        *overrides, *cfg.eval,
    ]  # fmt: skip
    print(f"  eval {arm}: {cfg.eval_videos} videos, K={cfg.sample_steps}", flush=True)
    try:
        ev = run_eval(load_job_config(checkpoint, base), progress=False)
    except ValueError as exc:
        if "FVD needs" not in str(exc):
            raise
        ctx.notes.append(f"{arm}: {exc}; FVD left empty")
        no_fvd = ("temporal_flickering", "motion_smoothness", "dynamic_degree",
                  "subject_consistency", "length")  # fmt: skip
        ev = run_eval(load_job_config(checkpoint, [*base, f"eval.metrics=[{','.join(no_fvd)}]"]))
    m = ev.metrics
    key = ev.params.get("fvd.key", "")  # e.g. fvd64_10f_64px: the counts actually used
    subject = m.get("vbench/subject_consistency", m.get("proxy/subject_consistency_i3d"))
    return {
        "fvd": float(m.get(key, math.nan)),
        "fvd_key": key or "n/a",
        "fvd_clips": f"{int(m.get(f'{key}/num_real', 0))}+{int(m.get(f'{key}/num_fake', 0))}",
        "fvd_non_standard": bool(ev.params.get("fvd.non_standard", True)),
        "flicker": float(m.get("vbench/temporal_flickering", math.nan)),
        "smoothness": float(m.get("proxy/motion_smoothness_farneback", math.nan)),
        "dynamic": float(m.get("proxy/dynamic_degree_farneback", math.nan)),
        "subject": float(math.nan if subject is None else subject),
        "len_gen": float(m.get("length/mean_generated", math.nan)),
        "len_data": float(m.get("length/mean_data", math.nan)),
        "len_w1": float(m.get("length/wasserstein", math.nan)),
    }


def bar_plot(
    rows: list[dict[str, Any]], path: Path, *, label: str, columns: tuple[str, ...], title: str
) -> Path:
    """One bar panel per column, one bar per row (NaN bars left empty)."""
    from flowception.eval.visualize import pyplot

    plt = pyplot()
    cols = [c for c in columns if any(isinstance(r.get(c), (int, float)) for r in rows)]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), squeeze=False)
    names = [str(r[label]) for r in rows]
    for ax, col in zip(axes[0], cols):
        values = [float(r.get(col, math.nan)) for r in rows]
        ax.bar(range(len(rows)), [v if math.isfinite(v) else 0.0 for v in values], color="C0")
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(col, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
