"""Demo recipe sweep (issue 17 item 1): which data, model, patch, frame budget, learning
rate, schedule and EMA learn visibly within the demo's minutes on 2 CPU cores.

    python benchmarks/demo_recipe.py                            # every arm, 600 s each (idle machine)
    python benchmarks/demo_recipe.py --arms s128-p4-f64 tiny-p4-f32 --budget 900
    nice -n 10 python benchmarks/demo_recipe.py --quick         # smoke: 2 arms x 60 s
    python benchmarks/demo_recipe.py --list                     # the arms and their settings
    python benchmarks/demo_recipe.py --probe 8                  # mfu_cpu of each arm's step only

Every arm trains single-process (no Ray, no DeepSpeed: the worker's maths without its
overhead) on in-memory 32x32 Moving MNIST, image-to-video with unconditional rows as
``make demo`` does, for a fixed wall-clock budget: the learning-rate schedule runs on the
fraction of the budget spent, so the number of steps is whatever fits. Then, with the EMA
weights, on held-out videos and fixed draws (comparable across arms):

- ``val_velocity_loss``: E13 on 4 fixed batches of test videos;
- ``rate_calibration``: sum lambda / sum k over rate-masked frames, per task (1 = calibrated);
- generated length: mean length of image-to-video and unconditional samples against the
  data's (``length_ratio`` = generated / data);
- ``mfu_cpu``: training FLOPs per second (``model.flops.training_flops``) over the fp32 GEMM
  rate measured on this machine (``model.flops.gemm_rate``) with the same threads.

Writes ``benchmarks/results/demo_recipe.json``, ``demo_recipe.md`` (the table) and one frame
grid per arm under ``benchmarks/results/demo_recipe/`` (rows: image-to-video samples, then
unconditional ones; columns: frames).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowception.model.config import MethodConfig, model_config
from flowception.model.dit import DiT
from flowception.model.ema import EMA
from flowception.model.flops import gemm_rate, training_flops
from flowception.model.generate import generate
from flowception.model.schedule import mean_insertion_target
from flowception.model.training import rate_calibration, training_step
from flowception.pipelines.sources import moving_mnist

RESULTS = Path(__file__).resolve().parent / "results"
MIN_FRAMES, MAX_FRAMES, SIZE = 10, 16, 32  # the demo's data (eval/demo.py make_data)
SPEED: float | None = None  # digit speed in px/frame (None: moving_mnist's default)
GLYPHS: int | None = None  # digit images both splits draw from (None: all of each split's)


@dataclass(frozen=True)
class Recipe:
    """One arm of the sweep."""

    name: str
    size: str = "tiny"  # model.config.MODEL_SIZES
    patch: int = 4
    digits: int = 2
    frame_budget: int = 32  # frames per batch (sum of clip lengths)
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine | constant, over the wall-clock budget
    warmup: float = 0.05  # share of the budget
    ema: float = 0.99
    uncond_prob: float = 0.3
    qk_norm: bool = True  # model.qk_norm (the spec DiT's default)
    context_stream: str = "context_frames"  # model.context_stream (spec default)
    rope_theta: float = 10000.0  # model.rope_theta
    time_shift: float = 1.0  # method.time_shift (E3), in training and sampling alike
    method: str = "flowception"  # method.method: a baseline's law trains every frame

    def model_config(self):
        """The arm's DiT on the demo's frames."""
        return model_config(self.size, frame_size=(SIZE, SIZE), patch_size=self.patch,
                            qk_norm=self.qk_norm, context_stream=self.context_stream,
                            rope_theta=self.rope_theta)  # fmt: skip


ARMS = [
    Recipe("tiny-p4-f32"),  # today's demo model and batch
    Recipe("s64-p4-f32", size="s-64"),
    Recipe("s64-p4-f64", size="s-64", frame_budget=64),
    Recipe("s128-p4-f64", size="s-128", frame_budget=64, lr=5e-4),
    Recipe("s128-p4-f128", size="s-128", frame_budget=128, lr=5e-4),
    Recipe("s128-p8-f128", size="s-128", patch=8, frame_budget=128, lr=5e-4),
    Recipe("s128-p4-f64-1digit", size="s-128", frame_budget=64, lr=5e-4, digits=1),
    Recipe("s128-p4-f64-const", size="s-128", frame_budget=64, lr=5e-4, schedule="constant"),
    Recipe("s128-p4-f64-ema999", size="s-128", frame_budget=64, lr=5e-4, ema=0.999),
    Recipe("s128-p4-f64-lr1e-3", size="s-128", frame_budget=64, lr=1e-3),
    Recipe("s128-p8-f128-lr1e-3", size="s-128", patch=8, frame_budget=128, lr=1e-3),
    Recipe("s128-p8-f128-1digit", size="s-128", patch=8, frame_budget=128, lr=1e-3, digits=1),
]
QUICK = ["tiny-p4-f32", "s128-p4-f64"]


def method_for(recipe: Recipe) -> MethodConfig:
    return MethodConfig(method=recipe.method, task="image_to_video",
                        uncond_prob=recipe.uncond_prob, n_start=2, max_frames=MAX_FRAMES,
                        num_frames=MAX_FRAMES, num_steps=16,
                        time_shift=recipe.time_shift)  # fmt: skip


# --------------------------------------------------------------------------- #
#                                    Data                                     #
# --------------------------------------------------------------------------- #


def videos(num: int, split: str, digits: int, seed: int) -> list[torch.Tensor]:
    """Moving MNIST clips in ``[-1, 1]``, each ``[T, 1, 32, 32]``, T in [10, 16]."""
    clips = moving_mnist(num, split=split, size=SIZE, min_frames=MIN_FRAMES,
                         max_frames=MAX_FRAMES, num_digits=digits, seed=seed,
                         speed=SPEED, glyphs=GLYPHS)  # fmt: skip
    return [torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for c in clips]


def batch(pool: list[torch.Tensor], budget: int, rng: np.random.Generator):
    """Random videos until the next would exceed ``budget`` frames: ``[B, F, 1, H, W]``, ``[B]``."""
    picked, frames = [], 0
    while True:
        v = pool[int(rng.integers(len(pool)))]
        if picked and frames + v.shape[0] > budget:
            break
        picked.append(v)
        frames += v.shape[0]
    f = max(v.shape[0] for v in picked)
    out = torch.zeros(len(picked), f, *picked[0].shape[1:])  # (B, F, C, H, W)
    for i, v in enumerate(picked):
        out[i, : v.shape[0]] = v
    return out, torch.tensor([v.shape[0] for v in picked])


# --------------------------------------------------------------------------- #
#                                  One arm                                    #
# --------------------------------------------------------------------------- #


def lr_factor(spent: float, recipe: Recipe) -> float:
    """Linear warm-up then cosine to 10% (or constant) over the share of the budget spent."""
    if spent < recipe.warmup:
        return max(spent / recipe.warmup, 0.01)
    if recipe.schedule == "constant":
        return 1.0
    x = min((spent - recipe.warmup) / (1.0 - recipe.warmup), 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * x))


@dataclass
class Fit:
    """A trained arm: the network with its EMA weights (eval mode) and what training did."""

    net: DiT
    cfg: Any
    method: MethodConfig
    rate_init: float
    steps: int
    flops: float
    tokens: float
    losses: list[tuple[float, float]]  # (velocity, insertion) per step
    train_s: float


def fit(recipe: Recipe, budget_s: float, seed: int, num_train: int, *,
        pool: list[torch.Tensor] | None = None, cfg: Any = None) -> Fit:  # fmt: skip
    """Train ``recipe`` for ``budget_s`` seconds (the schedule runs on the share spent).

    ``pool`` (clips ``[T, C, H, W]``) and ``cfg`` (their DiT) replace the arm's pixel clips
    and model, e.g. with latents (``benchmarks/latent_probe.py``)."""
    method = method_for(recipe)
    cfg = cfg if cfg is not None else recipe.model_config()
    train = pool if pool is not None else videos(num_train, "train", recipe.digits, seed)
    torch.manual_seed(seed)
    rate_init = mean_insertion_target(MAX_FRAMES, method)
    net = DiT(cfg, rate_init=rate_init)
    ema = EMA(net, recipe.ema)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps, flops, tokens, losses = 0, 0.0, 0.0, []
    start = time.perf_counter()
    while (spent := (time.perf_counter() - start) / budget_s) < 1.0:
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(spent, recipe)
        x, lengths = batch(train, recipe.frame_budget, rng)
        out = training_step(net, x, lengths, method=method, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net)
        steps += 1
        f = training_flops(out.index.cu_seqlens, cfg)
        flops, tokens = flops + f["total"], tokens + f["tokens"]
        losses.append((out.loss.velocity.item(), out.loss.insertion.item()))
    train_s = time.perf_counter() - start
    ema.copy_to(net)
    net.eval()
    return Fit(net, cfg, method, rate_init, steps, flops, tokens, losses, train_s)


def train_arm(recipe: Recipe, budget_s: float, peak: float, seed: int, num_train: int) -> dict:
    """Train for ``budget_s`` seconds, then evaluate the EMA weights (untimed)."""
    run = fit(recipe, budget_s, seed, num_train)
    net, cfg, method, rate_init, steps = run.net, run.cfg, run.method, run.rate_init, run.steps
    flops, tokens, losses, train_s = run.flops, run.tokens, run.losses, run.train_s
    tail = losses[-max(len(losses) // 10, 1) :]
    t_eval = time.perf_counter()
    evaluation = evaluate(net, method, recipe, seed)
    return {
        "recipe": asdict(recipe),
        "params": sum(p.numel() for p in net.parameters()),
        "tokens_per_frame": cfg.tokens_per_frame,
        "rate_init": rate_init,
        "steps": steps,
        "train_s": train_s,
        "train_velocity_loss": float(np.mean([v for v, _ in tail])),
        "train_insertion_loss": float(np.mean([i for _, i in tail])),
        "tokens_per_s": tokens / train_s,
        "mfu_cpu": flops / train_s / peak,
        **evaluation,
        "eval_s": time.perf_counter() - t_eval,
    }


@torch.no_grad()
def evaluate(net: DiT, method: MethodConfig, recipe: Recipe, seed: int) -> dict:
    """Held-out velocity loss and rate calibration at fixed draws; generated lengths; grid."""
    test = videos(64, "test", recipe.digits, seed + 1)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    vel, sums = [], {}
    for _ in range(4):
        x, lengths = batch(test, 64, rng)
        out = training_step(net, x, lengths, method=method, generator=gen)
        vel.append(float(out.loss.velocity))
        for key, value in out.stats.items():
            if key.startswith(("rate_lambda_sum/", "rate_k_sum/")):
                sums[key] = sums.get(key, 0.0) + value
    data_len = float(np.mean([v.shape[0] for v in test]))
    firsts = [v[:1] for v in test[:8]]
    i2v = generate(net, method=method, num_videos=8, context=firsts,
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    uncond = generate(net, method=method.replace(task="unconditional"), num_videos=8,
                      generator=torch.Generator().manual_seed(2))  # fmt: skip
    lens = {"image_to_video": [v.shape[0] for v in i2v.videos],
            "unconditional": [v.shape[0] for v in uncond.videos]}  # fmt: skip
    grid = write_grid(i2v.videos + uncond.videos, RESULTS / "demo_recipe" / f"{recipe.name}.png")
    calib = rate_calibration(sums)
    return {
        "val_velocity_loss": float(np.mean(vel)),
        "rate_calibration": calib.get("diag/rate_calibration", float("nan")),
        "rate_calibration_per_task": {k.rsplit("/", 1)[1]: v for k, v in calib.items() if k.count("/") == 2},
        "data_length_mean": data_len,
        "generated_length_mean": {k: float(np.mean(v)) for k, v in lens.items()},
        "length_ratio": {k: float(np.mean(v)) / data_len for k, v in lens.items()},
        "at_cap": {k: int(sum(n >= MAX_FRAMES for n in v)) for k, v in lens.items()},
        "grid": str(grid.relative_to(RESULTS)),
    }  # fmt: skip


def write_grid(clips: list[torch.Tensor], path: Path) -> Path:
    """One row per video, one column per frame (black past a video's end), as PNG."""
    from PIL import Image

    cols = max(v.shape[0] for v in clips)
    h, w = clips[0].shape[-2:]
    canvas = np.zeros((len(clips) * (h + 1), cols * (w + 1)), dtype=np.uint8)
    for r, v in enumerate(clips):
        frames = ((v[:, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # (T, H, W)
        for c, frame in enumerate(frames):
            canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frame
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2)).save(path)
    return path


def mfu_probe(recipe: Recipe, steps: int, seed: int) -> dict:
    """``mfu_cpu`` of the arm's training step alone: the best step rate over the best GEMM
    rate, measured in turns, so a machine shared with other jobs biases both alike."""
    method = method_for(recipe)
    cfg = recipe.model_config()
    pool = videos(64, "train", recipe.digits, seed)
    torch.manual_seed(seed)
    net = DiT(cfg, rate_init=mean_insertion_target(MAX_FRAMES, method))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    best_step, best_gemm = 0.0, 0.0
    for i in range(steps + 1):
        best_gemm = max(best_gemm, gemm_rate(seconds=0.2))
        x, lengths = batch(pool, recipe.frame_budget, rng)
        t0 = time.perf_counter()
        out = training_step(net, x, lengths, method=method, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.total.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i:  # the first step warms up the allocator and the thread pool
            best_step = max(best_step, training_flops(out.index.cu_seqlens, cfg)["total"] / dt)
    return {"recipe": asdict(recipe), "step_flops_per_s": best_step,
            "gemm_flops_per_s": best_gemm, "mfu_cpu": best_step / best_gemm}  # fmt: skip


# --------------------------------------------------------------------------- #
#                                   Report                                    #
# --------------------------------------------------------------------------- #


def table(rows: list[dict]) -> str:
    head = ("| arm | params | steps | val vel. loss | rate calib. (i2v / uncond) | "
            "length gen/data (i2v / uncond) | at cap | tokens/s | mfu_cpu |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per = r["rate_calibration_per_task"]
        ratio, cap = r["length_ratio"], r["at_cap"]
        lines.append(
            f"| {r['recipe']['name']} | {r['params'] / 1e3:.0f}k | {r['steps']} | "
            f"{r['val_velocity_loss']:.3f} | {per.get('image_to_video', float('nan')):.2f} / "
            f"{per.get('unconditional', float('nan')):.2f} | {ratio['image_to_video']:.2f} / "
            f"{ratio['unconditional']:.2f} | {cap['image_to_video']} / {cap['unconditional']} | "
            f"{r['tokens_per_s']:.0f} | {r['mfu_cpu']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="*", help="arm names (default: all; --list shows them)")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per arm")
    p.add_argument("--quick", action="store_true", help=f"arms {QUICK}, 60 s each")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--train-videos", type=int, default=400, help="training videos (the demo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "demo_recipe.json"))
    p.add_argument("--list", action="store_true")
    p.add_argument(
        "--probe",
        type=int,
        default=0,
        metavar="STEPS",
        help="only measure mfu_cpu of each arm's step (best of STEPS, no training)",
    )
    args = p.parse_args(argv)
    by_name = {r.name: r for r in ARMS}
    if args.list:
        for r in ARMS:
            print(asdict(r))
        return 0
    names = QUICK if args.quick and not args.arms else (args.arms or list(by_name))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"--arms {unknown}: unknown; known: {sorted(by_name)}")
    budget = 60.0 if args.quick and args.budget == 600.0 else args.budget
    torch.set_num_threads(args.threads)
    if args.probe:
        probes = [mfu_probe(by_name[n], args.probe, args.seed) for n in names]
        for r in probes:
            print(f"{r['recipe']['name']:22s} mfu_cpu {r['mfu_cpu']:.0%} "
                  f"(step {r['step_flops_per_s'] / 1e9:.1f} / GEMM "
                  f"{r['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s)")  # fmt: skip
        out = Path(args.out).with_name("demo_recipe_probe.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"threads": args.threads, "load_avg": os.getloadavg(),
                                   "arms": probes}, indent=2))  # fmt: skip
        return 0
    peak = gemm_rate(seconds=1.0)
    print(f"fp32 GEMM rate {peak / 1e9:.1f} GFLOP/s with {args.threads} threads; "
          f"{len(names)} arm(s) x {budget:.0f} s", flush=True)  # fmt: skip
    rows = []
    for name in names:
        row = train_arm(by_name[name], budget, peak, args.seed, args.train_videos)
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"platform": platform.platform(), "threads": args.threads, "budget_s": budget,
            "gemm_flops_per_s": peak, "load_avg": os.getloadavg(), "quick": args.quick}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "arms": rows}, indent=2))
    md = out.with_suffix(".md")
    md.write_text(
        f"# Demo recipe sweep\n\n{budget:.0f} s of training per arm, {args.threads} threads, "
        f"GEMM {peak / 1e9:.1f} GFLOP/s, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_avg'])}.\n\n{table(rows)}\n"
    )
    print(f"\nwrote {out} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
