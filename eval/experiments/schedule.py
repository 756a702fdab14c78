"""``schedule``: the training sampler on Moving MNIST lengths, measured against the spec.

For each global-time law (E8 ``bounded``, ``bounded_logit_normal``, E9 ``uniform02``;
one child run each) ``draws`` videos with lengths drawn from the training shards go
through ``flowception.model.schedule.sample_training_times``; the table gives the largest gap
between the visible fraction of non-start frames and ``kappa(tau_g) = tau_g`` (in 10
bins of ``tau_g <= 1``), and the attention / token FLOPs ratios against full sequence
(``model.flops``) in the insertion phase (E22, exact for these lengths) and over the
whole law (E23, ~2/3 and ~3/4 for long videos). A last row is ``benchmarks/bench_model.py``'s
fixed-length measurement (``L = max(lengths)``, ``n_s = 2``; spec oracle 11).

    flowception experiment schedule
    flowception experiment schedule --quick
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from flowception.eval.experiments.config import bench_model
from flowception.eval.experiments.runner import ExperimentContext

TITLE = "Training sampler: visibility law and cost ratios, measured vs predicted (E4, E22, E23)"
NEEDS_RAY = False
LAWS = ("bounded", "bounded_logit_normal", "uniform02")
BINS = 10
CURVES = "visibility.json"  # visible fraction per tau_g bin and law, read by plot()


def shard_lengths(shards: str) -> list[int]:
    """``num_frames`` of every sample, from the ``{key}.json`` members of the shards."""
    import io
    import tarfile

    from flowception.pipelines.schema import parse_meta, split_member
    from flowception.pipelines.shards import list_shards, read_bytes

    out = []
    for shard in list_shards(shards):
        with tarfile.open(fileobj=io.BytesIO(read_bytes(shard.url))) as tar:
            for member in tar.getmembers():
                parts = split_member(member.name)
                if parts and parts[1] == "json":
                    out.append(parse_meta(tar.extractfile(member).read()).num_frames)
    if not out:
        raise ValueError(f"{shards}: no samples")
    return out


def measure(lengths: torch.Tensor, law: str, seed: int, n_start: int = 2) -> dict[str, Any]:
    """Visibility law and FLOPs ratios of one draw of ``len(lengths)`` videos."""
    from flowception.model.config import MethodConfig, model_config
    from flowception.model.flops import expected_visible_moments, forward_flops
    from flowception.model.schedule import sample_training_times

    method = MethodConfig(n_start=n_start, tau_g_law=law)
    s = sample_training_times(lengths, int(lengths.max()), method,
                              torch.Generator().manual_seed(seed))  # fmt: skip
    counts = s.visible.sum(1)  # (B,)
    free = s.valid & ~s.is_start & ~s.is_context  # (B, F) frames with a U[0,1) delay
    edges = torch.linspace(0, 1, BINS + 1)
    fractions = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = (s.tau_g >= lo) & (s.tau_g < hi)
        n = int(free[rows].sum())
        frac = float((s.visible & free)[rows].sum()) / n if n else math.nan
        fractions.append((float((lo + hi) / 2), frac, n))
    cfg = model_config("tiny", frame_size=(32, 32), in_channels=1)

    def ratio(rows: torch.Tensor) -> dict[str, float]:
        cu = torch.zeros(int(rows.sum()) + 1, dtype=torch.int32)
        cu[1:] = counts[rows].cumsum(0)
        full = torch.zeros_like(cu)
        full[1:] = lengths[rows].cumsum(0)
        a, f = forward_flops(cu, cfg), forward_flops(full, cfg)
        return {"attention": a["attention"] / f["attention"], "tokens": a["tokens"] / f["tokens"]}

    phase = s.tau_g <= 1
    ph, whole = ratio(phase), ratio(torch.ones_like(phase))
    moments = [expected_visible_moments(int(n), n_start) for n in lengths[phase]]
    sq = float((lengths[phase].double() ** 2).sum())
    # E22 exact for these lengths: sum E[n^2] / sum L^2, sum E[n] / sum L
    pred_att = sum(m[1] for m in moments) / sq
    pred_tok = sum(m[0] for m in moments) / float(lengths[phase].sum())
    gaps = [abs(f - c) for c, f, n in fractions if n > 50]
    return {
        "law": law,
        "draws": int(lengths.numel()),
        "mean_L": float(lengths.double().mean()),
        "share_tau_g_le_1": float(phase.double().mean()),
        "max_vis_gap": max(gaps) if gaps else math.nan,
        "e22_att": ph["attention"], "e22_att_pred": pred_att,
        "e22_tok": ph["tokens"], "e22_tok_pred": pred_tok,
        "e23_att": whole["attention"], "e23_att_pred": 2 / 3,
        "e23_tok": whole["tokens"], "e23_tok_pred": 3 / 4,
        "_fractions": fractions,
    }  # fmt: skip


def run(ctx: ExperimentContext) -> list[dict[str, Any]]:
    """One child per law on the shard lengths, plus bench_model's fixed-length row."""
    from flowception.eval.demo import DemoPlan, make_data

    cfg = ctx.cfg
    if cfg.shards:
        train = cfg.shards
    else:
        plan = DemoPlan(train_videos=cfg.train_videos, test_videos=cfg.test_videos, steps=1,
                        eval_videos=1, sample_videos=0, checkpoint_every=1)  # fmt: skip
        root = Path(cfg.out).resolve() / "data" / f"mm-{cfg.train_videos}-{cfg.test_videos}"
        train = make_data(root, plan)["train"]
    pool = torch.tensor(shard_lengths(train))
    g = torch.Generator().manual_seed(cfg.seed)
    lengths = pool[torch.randint(len(pool), (cfg.draws,), generator=g)]
    rows = []
    for law in cfg.pick_arms(LAWS):
        row = measure(lengths, law, cfg.seed)
        run_id = ctx.child_run(law, {"tau_g_law": law, "draws": cfg.draws, "n_start": 2})
        client = ctx.client
        for i, (centre, frac, _) in enumerate(row["_fractions"]):
            if math.isfinite(frac):
                client.log_metric(run_id, "visible_fraction", frac, step=i)
                client.log_metric(run_id, "kappa", centre, step=i)
        ctx.log_metrics(run_id, {k: v for k, v in row.items() if not k.startswith("_")})
        rows.append(row)
    length = max(cfg.lengths)
    bench = bench_model().training_flops_ratio(length, 2, cfg.draws, cfg.seed)
    ip, wl = bench["insertion_phase"], bench["whole_law"]
    fixed = {"law": f"bounded, L={length} fixed (bench_model)", "draws": cfg.draws,
             "mean_L": float(length), "e22_att": ip["attention"],
             "e22_att_pred": ip["predicted"]["attention"], "e22_tok": ip["tokens"],
             "e22_tok_pred": ip["predicted"]["tokens"], "e23_att": wl["attention"],
             "e23_att_pred": 2 / 3, "e23_tok": wl["tokens"], "e23_tok_pred": 3 / 4}  # fmt: skip
    ctx.log_metrics(ctx.child_run(f"fixed-L{length}", {"L": length, "n_start": 2}, role="reference"),
                    {k: v for k, v in fixed.items() if k != "law"})  # fmt: skip
    rows.append(fixed)
    ctx.notes.append(f"training lengths {int(pool.min())}-{int(pool.max())} "
                     f"(mean {pool.double().mean():.2f}) from {len(pool)} training videos; "
                     "n_s = 2 start frames, unconditional; max_vis_gap over bins with > 50 frames")  # fmt: skip
    curves = {r["law"]: r.pop("_fractions") for r in rows if "_fractions" in r}
    (ctx.folder / CURVES).write_text(json.dumps(curves))
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Visible fraction against ``tau_g`` per law (with ``kappa``), and the cost ratios."""
    from flowception.eval.visualize import pyplot

    plt = pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.6))
    curves = path.parent / CURVES
    for law, frs in (json.loads(curves.read_text()) if curves.exists() else {}).items():
        pts = [(c, f) for c, f, n in frs if math.isfinite(f)]
        a0.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=law)
    a0.plot([0, 1], [0, 1], "k--", lw=1, label="kappa(tau_g) = tau_g")
    a0.set_xlabel("tau_g (insertion phase)")
    a0.set_ylabel("visible fraction of non-start frames")
    a0.legend(fontsize=7)
    names = ["e22_att", "e22_tok", "e23_att", "e23_tok"]
    width = 0.8 / (len(rows) + 1)
    for i, r in enumerate(rows):
        a1.bar([j + i * width for j in range(4)], [r.get(n, math.nan) for n in names], width,
               label=r["law"])  # fmt: skip
    a1.scatter([j + len(rows) * width for j in range(4)], [rows[-1][n + "_pred"] for n in names],
               marker="_", s=400, color="k", label="predicted (fixed L)")  # fmt: skip
    a1.set_xticks([j + 0.4 for j in range(4)], names)
    a1.set_ylabel("Flowception / full sequence")
    a1.legend(fontsize=6)
    fig.suptitle(TITLE, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
