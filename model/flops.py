"""FLOPs of packed batches and the cost model of spec section 11 (E22-E24)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowception.model.config import ModelConfig


def attended_frame_pairs(frames: int, window: int | None, causal: bool) -> int:
    """Pairs (query frame, key frame) of one video that attention computes (spec section 7)."""
    r = torch.arange(frames)
    diff = r[:, None] - r[None, :]  # query rank - key rank
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if window is not None:
        allowed &= diff.abs() <= window
    if causal:
        allowed &= diff >= 0
    return int(allowed.sum())


def forward_flops(cu_seqlens: Tensor, cfg: ModelConfig) -> dict[str, float]:
    """Attention and linear FLOPs of one forward pass over a packed batch (spec section 11).

    Per layer and video: attention ``4 n_tok^2 D`` for full attention (``4 D N^2`` per
    attended pair of frames under a frame window ``W`` or block-causal attention),
    linear layers ``24 n_tok D^2``, with ``n_tok`` the video's tokens.
    """
    frames = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    n, d = cfg.tokens_per_frame, float(cfg.width)
    causal = cfg.attention == "causal"
    pairs = {f: attended_frame_pairs(f, cfg.window, causal) for f in set(frames.tolist())}
    attended = float(sum(pairs[f] for f in frames.tolist()))
    n_tok = frames.double() * n
    attention = 4.0 * attended * n * n * d * cfg.depth
    linear = float((24.0 * n_tok * d * d).sum()) * cfg.depth
    return {
        "attention": attention,
        "linear": linear,
        "total": attention + linear,
        "tokens": float(n_tok.sum()),
    }


def training_flops(cu_seqlens: Tensor, cfg: ModelConfig) -> dict[str, float]:
    """Forward + backward: three times the forward FLOPs."""
    return {k: (3.0 * v if k != "tokens" else v) for k, v in forward_flops(cu_seqlens, cfg).items()}


def expected_visible_moments(length: int, n_start: int) -> tuple[float, float]:
    """``(E[n], E[n^2])`` of visible frames in the insertion phase, ``tau_g ~ U[0, 1]`` (E22)."""
    m = length - n_start
    e_n = n_start + m / 2.0
    e_n2 = n_start**2 + n_start * m + m / 6.0 + m * m / 3.0
    return e_n, e_n2


def insertion_phase_ratios(length: int, n_start: int) -> dict[str, float]:
    """E22: attention ``E[n^2] / L^2`` and tokens ``E[n] / L`` against full sequence."""
    e_n, e_n2 = expected_visible_moments(length, n_start)
    return {"attention": e_n2 / length**2, "tokens": e_n / length}


def gemm_rate(size: int = 512, seconds: float = 0.5, device: str = "cpu") -> float:
    """The machine's fp32 GEMM rate in FLOP/s: the best of timed ``size x size`` matmuls.

    Uses torch's current thread count (a Ray Train worker's share of the CPU), ``2 size^3``
    FLOPs per product, at least 3 products and ``seconds`` of timing. The denominator of
    ``mfu_cpu`` (issue 17): training FLOPs per second over this rate.
    """
    import time

    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)  # warm-up: thread pool and caches
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return 2.0 * size**3 / best
