"""Model benchmark: the cost model of spec section 11 measured on real batches, and the
speed of packed against padded training steps.

    python benchmarks/bench_model.py            # writes benchmarks/results/model.json
    python benchmarks/bench_model.py --quick    # fewer draws and steps

(a) attention FLOPs of training batches under the extended-time sampler / full
    sequence on the same videos: insertion phase (E22, ~1/3) and the whole law (E23, ~2/3);
(b) packed vs padded training-step time at equal visible frames (same run, same model);
(c) sampler cost of Flowception vs full sequence (tokens x evaluations and attention),
    at equal evaluations (E24, ~2/3 attention, ~3/4 tokens) and at equal step size (~4/3, ~3/2).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from flowception.model.config import MethodConfig, model_config
from flowception.model.dit import DiT
from flowception.model.flops import forward_flops, insertion_phase_ratios
from flowception.model.packing import pack, pack_index, ranks_from_cu_seqlens
from flowception.model.sampler import sample
from flowception.model.schedule import sample_training_times

RESULTS = Path(__file__).resolve().parent / "results"


def training_flops_ratio(length: int, n_start: int, draws: int, seed: int) -> dict:
    """(a): attention / token ratios of sampled training batches against full sequence."""
    cfg = model_config("tiny", frame_size=(8, 8))
    s = sample_training_times(
        torch.full((draws,), length),
        length,
        MethodConfig(n_start=n_start),
        torch.Generator().manual_seed(seed),
    )
    counts = s.visible.sum(1)

    def ratio(rows: torch.Tensor) -> dict:
        cu = torch.zeros(int(rows.sum()) + 1, dtype=torch.int32)
        cu[1:] = counts[rows].cumsum(0)
        full = torch.arange(int(rows.sum()) + 1, dtype=torch.int32) * length
        a, f = forward_flops(cu, cfg), forward_flops(full, cfg)
        return {"attention": a["attention"] / f["attention"], "tokens": a["tokens"] / f["tokens"]}

    phase = s.tau_g <= 1
    return {
        "L": length,
        "n_s": n_start,
        "draws": draws,
        "insertion_phase": {**ratio(phase), "predicted": insertion_phase_ratios(length, n_start)},
        "whole_law": {
            **ratio(torch.ones_like(phase)),
            "predicted": {"attention": 2 / 3, "tokens": 3 / 4},
        },
    }


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def packed_vs_padded(batch: int, length: int, repeats: int, seed: int) -> dict:
    """(b): one forward+backward on the visible frames, packed vs padded to the longest."""
    torch.manual_seed(seed)
    cfg = model_config("s-64", frame_size=(32, 32), in_channels=1)
    net = DiT(cfg)
    g = torch.Generator().manual_seed(seed)
    s = sample_training_times(torch.full((batch,), length), length, MethodConfig(), g)
    x = torch.randn(batch, length, 1, 32, 32, generator=g)
    idx = pack_index(s.visible)
    xp, tp = pack(x, idx), pack(s.t, idx)
    n_max = int(s.visible.sum(1).max())
    x_pad = torch.randn(batch * n_max, 1, 32, 32, generator=g)
    t_pad = torch.rand(batch * n_max, generator=g)
    cu_pad = torch.arange(batch + 1, dtype=torch.int32) * n_max

    def step(xx, tt, cu):
        def run():
            net.zero_grad(set_to_none=True)
            out = net(xx, tt, cu)
            (out.velocity.square().mean() + out.rate_logit.square().mean()).backward()

        return run

    t_packed = _time(step(xp, tp, idx.cu_seqlens), repeats)
    t_padded = _time(step(x_pad, t_pad, cu_pad), repeats)
    return {
        "batch": batch,
        "L": length,
        "visible_frames": idx.num_frames,
        "padded_frames": batch * n_max,
        "packed_s": t_packed,
        "padded_s": t_padded,
        "padded_over_packed": t_padded / t_packed,
        "model": "s-64 @ 32x32, patch 4",
    }


def sampler_cost(length: int, num_steps: int, videos: int, seed: int) -> dict:
    """(c): tokens x evaluations and attention of the sampler driven by the exact rate."""
    used = {"tokens": 0.0, "attention": 0.0, "evaluations": 0}

    def fn(x, t, cu, **kw):
        c = (cu[1:] - cu[:-1]).double()
        used["tokens"] += float(c.sum())
        used["attention"] += float((c**2).sum())
        used["evaluations"] += 1
        vid, _ = ranks_from_cu_seqlens(cu)
        n = c.float()[vid]
        return torch.zeros_like(x), (length - n) / n

    out = sample(fn, num_videos=videos, frame_shape=(1, 2, 2), num_steps=num_steps, num_start_frames=2,
                 max_frames=4 * length, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    mean_len = sum(v.shape[0] for v in out.videos) / videos
    res = {"L": length, "K": num_steps, "n_s": 2, "videos": videos, "mean_final_length": mean_len}
    for name, evals in (("equal_evaluations", 2 * num_steps), ("equal_step_size", num_steps)):
        full_tok = evals * videos * length
        full_att = evals * videos * length**2
        res[name] = {
            "full_sequence_evaluations": evals,
            "tokens": used["tokens"] / full_tok,
            "attention": used["attention"] / full_att,
            "predicted": {"tokens": 0.75, "attention": 2 / 3}
            if name == "equal_evaluations"
            else {"tokens": 1.5, "attention": 4 / 3},
        }
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "model.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    q = args.quick
    result = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "a_training_flops": training_flops_ratio(32, 2, 2000 if q else 20000, 0),
        "b_packed_vs_padded": packed_vs_padded(8, 16, 2 if q else 5, 0),
        "c_sampler_cost": sampler_cost(32, 20 if q else 50, 16 if q else 48, 0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    a, b, c = result["a_training_flops"], result["b_packed_vs_padded"], result["c_sampler_cost"]
    rows = [
        (
            "(a) train attention, insertion phase (E22)",
            a["insertion_phase"]["attention"],
            a["insertion_phase"]["predicted"]["attention"],
        ),
        ("(a) train attention, whole law (E23)", a["whole_law"]["attention"], 2 / 3),
        ("(a) train tokens, whole law (E23)", a["whole_law"]["tokens"], 3 / 4),
        (
            "(b) padded / packed step time",
            b["padded_over_packed"],
            b["padded_frames"] / b["visible_frames"],
        ),
        ("(c) sampler attention, equal evals (E24)", c["equal_evaluations"]["attention"], 2 / 3),
        ("(c) sampler tokens, equal evals (E24)", c["equal_evaluations"]["tokens"], 3 / 4),
        ("(c) sampler attention, equal step (E24)", c["equal_step_size"]["attention"], 4 / 3),
        ("(c) sampler tokens, equal step (E24)", c["equal_step_size"]["tokens"], 3 / 2),
    ]
    print(f"L={a['L']}, n_s={a['n_s']}; (b) frames padded/visible shown as 'predicted'")
    print(f"{'ratio':46s} {'measured':>9s} {'predicted':>9s}")
    for name, measured, predicted in rows:
        print(f"{name:46s} {measured:9.3f} {predicted:9.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
