"""``cost``: sampling FLOPs and wall-clock of Flowception against full sequence (spec E24).

One child run per length ``L``. The model is ``train_config``'s DiT (with ``train``
overrides; random weights: cost does not depend on them). Flowception's insertions are driven by the exact rate
of spec oracle 6, ``(L - n) / n``, so videos grow to ``L`` as a trained model's would;
the velocity is the DiT's. Full sequence samples ``L`` frames with ``2K`` steps (equal
evaluations) and ``K`` steps (equal step size). FLOPs are ``model.flops.forward_flops``
of every network call; the attention / token ratios at ``n_s = 2`` also come from
``benchmarks/bench_model.py``'s ``sampler_cost`` (its predictions: 2/3 and 3/4 at equal
evaluations, 4/3 and 3/2 at equal step size, for ``L >> n_s``).

    flowception experiment cost
    flowception experiment cost --quick
    flowception experiment cost lengths=[8,16,32,64] sample_steps=50
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from flowception.eval.experiments.arms import bar_plot
from flowception.eval.experiments.config import bench_model
from flowception.eval.experiments.runner import ExperimentContext
from flowception.model.config import ModelConfig

TITLE = "Sampling cost: Flowception / full sequence (E24), FLOPs and wall-clock"
NEEDS_RAY = False


class Counted:
    """Wraps a velocity field; sums ``forward_flops`` over its calls."""

    def __init__(self, fn, cfg, rate_length: int | None = None) -> None:
        self.fn, self.cfg, self.rate_length = fn, cfg, rate_length
        self.flops = {"attention": 0.0, "total": 0.0, "tokens": 0.0}
        self.calls = 0

    def __call__(self, x, t, cu, **kw):
        from flowception.model.flops import forward_flops
        from flowception.model.packing import ranks_from_cu_seqlens

        for k, v in forward_flops(cu, self.cfg).items():
            if k in self.flops:
                self.flops[k] += v
        self.calls += 1
        v, rate = self.fn(x, t, cu, **kw)
        if self.rate_length is not None:
            n = (cu[1:] - cu[:-1]).float()  # (B,)
            vid, _ = ranks_from_cu_seqlens(cu)
            rate = ((self.rate_length - n) / n)[vid]  # exact rate (spec oracle 6), (n,)
        return v, rate


def _timed(make, repeats: int) -> tuple[float, Counted]:
    make()  # warm-up
    best, counted = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        counted = make()
        best = min(best, time.perf_counter() - t0)
    return best, counted


def measure(
    cfg: ModelConfig, length: int, steps: int, videos: int, repeats: int, seed: int
) -> dict[str, Any]:
    """FLOPs and best-of-``repeats`` seconds of the three samplers at one length."""
    from flowception.model.baselines import sample_full_sequence
    from flowception.model.dit import DiT
    from flowception.model.generate import velocity_field
    from flowception.model.sampler import sample

    torch.manual_seed(seed)
    net = DiT(cfg).eval()
    field = velocity_field(net, None)
    shape = (cfg.in_channels, *cfg.frame_size)

    def flow() -> Counted:
        fn = Counted(field, cfg, rate_length=length)
        with torch.no_grad():
            out = sample(fn, num_videos=videos, frame_shape=shape, num_steps=steps,
                         num_start_frames=2, max_frames=4 * length,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        fn.lengths = [v.shape[0] for v in out.videos]
        return fn

    def full(k: int):
        def make() -> Counted:
            fn = Counted(field, cfg)
            with torch.no_grad():
                sample_full_sequence(fn, num_videos=videos, frame_shape=shape, num_steps=k,
                                     lengths=[length] * videos,
                                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
            return fn

        return make

    t_flow, c_flow = _timed(flow, repeats)
    t_eq_eval, c_eq_eval = _timed(full(2 * steps), repeats)
    t_eq_step, c_eq_step = _timed(full(steps), repeats)
    ee = bench_model().sampler_cost(length, steps, max(videos, 16), seed)["equal_evaluations"]
    return {
        "L": length, "K": steps,
        "mean_len": sum(c_flow.lengths) / videos,
        "flow_gflops": c_flow.flops["total"] / 1e9,
        "fs2K_gflops": c_eq_eval.flops["total"] / 1e9,
        "fsK_gflops": c_eq_step.flops["total"] / 1e9,
        "att_eq_eval": c_flow.flops["attention"] / c_eq_eval.flops["attention"],
        "tok_eq_eval": c_flow.flops["tokens"] / c_eq_eval.flops["tokens"],
        "att_eq_step": c_flow.flops["attention"] / c_eq_step.flops["attention"],
        "tok_eq_step": c_flow.flops["tokens"] / c_eq_step.flops["tokens"],
        "bench_att_eq_eval": ee["attention"], "bench_tok_eq_eval": ee["tokens"],
        "flow_s": t_flow, "fs2K_s": t_eq_eval, "fsK_s": t_eq_step,
        "time_eq_eval": t_flow / t_eq_eval, "time_eq_step": t_flow / t_eq_step,
    }  # fmt: skip


def run(ctx: ExperimentContext) -> list[dict[str, Any]]:
    """One child run per length."""
    from flowception.cluster.config import load_config
    from flowception.eval.experiments.config import ROOT

    cfg = ctx.cfg
    arms = cfg.pick_arms(tuple(str(n) for n in cfg.lengths))
    model_cfg = load_config(ROOT / cfg.train_config, list(cfg.train)).model
    rows = []
    torch.set_num_threads(1)  # a shared 2-core machine: one thread times more steadily
    for arm in arms:
        print(f"  L={arm}: K={cfg.sample_steps}, {cfg.videos} videos", flush=True)
        row = measure(model_cfg, int(arm), cfg.sample_steps, cfg.videos, cfg.repeats, cfg.seed)
        run_id = ctx.child_run(f"L={arm}", {"L": arm, "K": cfg.sample_steps, "videos": cfg.videos})
        ctx.log_metrics(run_id, row)
        rows.append(row)
    ctx.notes.append("predicted (L >> n_s = 2): attention / tokens 2/3 / 3/4 at equal "
                     "evaluations (flow K vs full 2K steps), 4/3 / 3/2 at equal step size; bench_* "
                     "= benchmarks/bench_model.py sampler_cost (zero velocity, 16+ videos)")  # fmt: skip
    m = model_cfg
    ctx.notes.append(f"DiT of {cfg.train_config} ({m.depth} blocks, width {m.width}, {m.heads} "
                     f"heads) at {m.frame_size[0]}x{m.frame_size[1]}, patch {m.patch_size}, fp32, "
                     f"{torch.get_num_threads()} thread(s); times are the best of {cfg.repeats} "
                     "run(s)")  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    labeled = [{**r, "arm": f"L={r['L']}"} for r in rows]
    return bar_plot(labeled, path, label="arm", title=TITLE, columns=(
        "att_eq_eval", "tok_eq_eval", "time_eq_eval", "att_eq_step", "time_eq_step"))  # fmt: skip
