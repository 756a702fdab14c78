"""Does a briefly trained demo-size model denoise, and does it read its context frame?

    python benchmarks/context_probe.py --budget 300 --patch 8 --digits 1 --frame-budget 128
    python benchmarks/context_probe.py --budget 600 --frames 4 8     # shorter clips
    python benchmarks/context_probe.py --budget 600 --static         # digits that do not move
    python benchmarks/context_probe.py --budget 600 --speed 0.3      # slower digits (px/frame)
    python benchmarks/context_probe.py --budget 600 --no-qk-norm     # attention without QK-norm
    python benchmarks/context_probe.py --budget 900 --glyphs 10 --save-net /tmp/net.pt  # 10 digit images

Trains one arm of ``benchmarks/demo_recipe.py`` (s-128, image-to-video with unconditional
rows) single-process for ``--budget`` seconds, then, with the EMA weights on 4 test clips
whose frame 0 is clean context and every other frame at one time ``s``:

- ``mse(x1_hat)``: the one-step estimate ``x1_hat = x_s + (1 - s) v`` against the clean
  frames, beside two references: every generated frame a copy of the context (``copy``) and
  every pixel background (``blank``);
- ``context effect``: mean |change| of the other frames' velocity when the context frame is
  blanked, against the velocity's own mean |value|: near 0 means the net ignores the context;
- ``attention``: per block, the largest share (over heads) of a generated frame's attention
  that goes to the tokens at its own patch position in the other frames, and to the context
  frame, each over what uniform attention gives: near 1 means attention is not selective.

``--static`` (= ``--speed 0``) makes every clip its first frame repeated (the context is then
the answer: ``copy`` = 0), which tells whether the net reads other frames at all.

Writes ``benchmarks/results/context_probe.json`` and a grid (per clip: the clip, then
``x1_hat`` at each ``s``, then sampled image-to-video videos at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_recipe as dr  # noqa: E402

import flowception.model.dit as dit_module  # noqa: E402
from flowception.model.dit import DiT  # noqa: E402
from flowception.model.generate import generate  # noqa: E402
from flowception.model.packing import pack_index  # noqa: E402

TIMES = (0.0, 0.5, 0.8, 0.95)
ATTENTION_AT = 0.5  # the time of the generated frames whose attention is measured


@contextmanager
def recorded_attention():
    """Yields a list that gets each block's attention probabilities ``[heads, T, T]`` of the
    net calls made inside (one video, full attention)."""
    probs: list[torch.Tensor] = []
    real = dit_module.packed_attention

    def record(q, k, v, **kw):  # (T, heads, hd) each
        logits = q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2) / q.shape[-1] ** 0.5
        probs.append(torch.softmax(logits.float(), -1))  # (heads, T, T)
        return real(q, k, v, **kw)

    dit_module.packed_attention = record
    try:
        yield probs
    finally:
        dit_module.packed_attention = real


def attention_selectivity(probs: list[torch.Tensor], n: int, ntok: int) -> list[dict[str, float]]:
    """Per block: max over heads of the attention share a generated frame (frame 0 is the
    context) gives to (a) its own patch position in the other frames and (b) the context
    frame, each divided by the share uniform attention would give."""
    frame = torch.arange(n).repeat_interleave(ntok)  # (T,)
    pos = torch.arange(ntok).repeat(n)
    same_pos = ((pos[:, None] == pos[None]) & (frame[:, None] != frame[None])).float()
    to_ctx = (frame[None] == 0).float().expand(frame.numel(), -1)
    query = frame != 0

    def share(a: torch.Tensor, keys: torch.Tensor) -> float:  # largest over heads
        return float((a[:, query] * keys[query]).sum(-1).mean(-1).max())

    return [{"same_position": share(a, same_pos) / ((n - 1) / (n * ntok)),
             "context": share(a, to_ctx) / (1 / n)} for a in probs]  # fmt: skip


def train(recipe: dr.Recipe, budget: float) -> tuple[DiT, int, list[float]]:
    """``demo_recipe.fit`` with seed 0 on the demo's 400 training videos."""
    run = dr.fit(recipe, budget, seed=0, num_train=400)
    return run.net, run.steps, [v for v, _ in run.losses]


@torch.no_grad()
def probe(net: DiT, recipe: dr.Recipe) -> tuple[dict, list[torch.Tensor]]:
    test = dr.videos(4, "test", recipe.digits, 1)
    rows: list[torch.Tensor] = []
    mse = {s: [] for s in TIMES}
    copy, blank, effect, scale = [], [], [], []
    for i, v in enumerate(test):
        n = v.shape[0]
        cu = pack_index(torch.ones(1, n, dtype=torch.bool)).cu_seqlens
        ctx = torch.zeros(n, dtype=torch.bool)
        ctx[0] = True
        x0 = torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
        rows.append(v)
        for s in TIMES:
            t = torch.full((n,), s)
            t[0] = 1.0
            xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * v
            xt[0] = v[0]
            watch = i == 0 and s == ATTENTION_AT
            with recorded_attention() if watch else nullcontext() as probs:
                vel = net(xt, t, cu, is_context=ctx).velocity
            if watch:
                attention = attention_selectivity(probs, n, net.cfg.tokens_per_frame)
            x1 = xt + (1 - t)[:, None, None, None] * vel
            mse[s].append(((x1[1:] - v[1:]) ** 2).mean().item())
            rows.append(x1.clamp(-1, 1))
            if s == 0.0:
                blanked = xt.clone()
                blanked[0] = -1.0
                other = net(blanked, t, cu, is_context=ctx).velocity
                effect.append((vel[1:] - other[1:]).abs().mean().item())
                scale.append(vel[1:].abs().mean().item())
        copy.append(((v[:1] - v[1:]) ** 2).mean().item())
        blank.append(((v[1:] + 1) ** 2).mean().item())
    method = dr.method_for(recipe)
    sampled = generate(net, method=method, num_videos=len(test), context=[v[:1] for v in test],
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    rows += sampled.videos
    result = {
        "mse_x1_hat": {str(s): float(np.mean(m)) for s, m in mse.items()},
        "mse_copy_context": float(np.mean(copy)),
        "mse_blank": float(np.mean(blank)),
        "context_effect": float(np.mean(effect)),
        "velocity_scale": float(np.mean(scale)),
        f"attention_over_uniform_at_s{ATTENTION_AT}": attention,
    }
    return result, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds")
    p.add_argument("--patch", type=int, default=8, help="patch size")
    p.add_argument("--digits", type=int, default=1, help="moving digits per clip")
    p.add_argument("--frame-budget", type=int, default=128, help="frames per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine)")
    p.add_argument("--size", default="s-128", help="model size (model.config.MODEL_SIZES)")
    p.add_argument("--static", action="store_true", help="= --speed 0: still digits")
    p.add_argument("--speed", type=float, default=None, help="digit px/frame (demo: 1.125)")
    p.add_argument("--no-qk-norm", action="store_true", help="model.qk_norm=false")
    p.add_argument(
        "--context-stream", default="context_frames", choices=["context_frames", "nearest_context"],
        help="model.context_stream (nearest_context: passive context in every frame's stream)",
    )  # fmt: skip
    p.add_argument("--rope-theta", type=float, default=10000.0, help="model.rope_theta")
    p.add_argument("--time-shift", type=float, default=1.0,
                   help="method.time_shift (E3; > 1 spends more of training and sampling "
                        "at noisy times)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--frames", type=int, nargs=2, default=[dr.MIN_FRAMES, dr.MAX_FRAMES],
        metavar=("MIN", "MAX"), help="clip lengths of the data (the demo's: 10 16)",
    )  # fmt: skip
    p.add_argument("--out", default=str(dr.RESULTS / "context_probe.json"))
    p.add_argument("--glyphs", type=int, default=None,
                   help="both splits draw their digits from N train digit images "
                        "(moving_mnist's glyphs: train and test clips then differ in motion, "
                        "place and length only)")  # fmt: skip
    p.add_argument("--method", default="flowception",
                   choices=["flowception", "full_sequence", "autoregressive"],
                   help="method.method: the training law (baselines train every frame)")  # fmt: skip
    p.add_argument("--save-net", default=None,
                   help="also write the EMA weights and the recipe here (torch.save) for "
                        "benchmarks/sampler_probe.py")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dr.MIN_FRAMES, dr.MAX_FRAMES = args.frames  # data and method_for read them at call time
    dr.SPEED = 0.0 if args.static else args.speed  # dr.videos reads it at call time
    dr.GLYPHS = args.glyphs  # dr.videos reads it at call time
    name = f"{args.size}-p{args.patch}-f{args.frame_budget}-{args.digits}digit"
    name += "-static" if args.static else "" if args.speed is None else f"-speed{args.speed:g}"
    name += "-noqknorm" if args.no_qk_norm else ""
    name += "-nearestctx" if args.context_stream == "nearest_context" else ""
    name += f"-theta{args.rope_theta:g}" if args.rope_theta != 10000.0 else ""
    name += f"-glyphs{args.glyphs}" if args.glyphs else ""
    name += f"-shift{args.time_shift:g}" if args.time_shift != 1.0 else ""
    name += f"-{args.method}" if args.method != "flowception" else ""
    recipe = dr.Recipe(name, size=args.size,
                       patch=args.patch, frame_budget=args.frame_budget, lr=args.lr,
                       digits=args.digits, qk_norm=not args.no_qk_norm,
                       context_stream=args.context_stream,
                       rope_theta=args.rope_theta,
                       time_shift=args.time_shift, method=args.method)  # fmt: skip
    net, steps, losses = train(recipe, args.budget)
    if args.save_net:
        torch.save({"state_dict": net.state_dict(), "recipe": recipe.__dict__, "steps": steps,
                    "frames": args.frames, "speed": dr.SPEED,
                    "glyphs": args.glyphs}, args.save_net)  # fmt: skip
    result, rows = probe(net, recipe)
    out = Path(args.out)
    grid = dr.write_grid(rows, out.with_suffix(".png"))
    record = {"recipe": recipe.__dict__, "budget_s": args.budget, "steps": steps,
              "frames": args.frames, "static": args.static,
              "speed": args.speed,
              "train_velocity_loss_last100": float(np.mean(losses[-100:])),
              "load_avg": os.getloadavg(), "grid": grid.name, **result}  # fmt: skip
    out.write_text(json.dumps(record, indent=2))
    for s, m in result["mse_x1_hat"].items():
        print(f"s={s}: mse(x1_hat) {m:.3f}  copy {result['mse_copy_context']:.3f}  "
              f"blank {result['mse_blank']:.3f}")  # fmt: skip
    print(f"context effect {result['context_effect']:.4f} of velocity scale "
          f"{result['velocity_scale']:.3f}; {steps} steps; wrote {out}")  # fmt: skip
    for b, a in enumerate(result[f"attention_over_uniform_at_s{ATTENTION_AT}"]):
        print(f"block {b}: attention x uniform: own position in other frames "
              f"{a['same_position']:.2f}, context frame {a['context']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
