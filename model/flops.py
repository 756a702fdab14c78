"""FLOPs of packed batches and the cost model of spec section 11 (E22-E24)."""

from __future__ import annotations

from torch import Tensor

from model.config import ModelConfig


def forward_flops(cu_seqlens: Tensor, cfg: ModelConfig) -> dict[str, float]:
    """Attention and linear FLOPs of one forward pass over a packed batch (spec section 11).

    Per layer and video: attention ``4 n_tok^2 D``, linear layers ``24 n_tok D^2``, with
    ``n_tok`` the video's tokens. With a frame window ``W`` each query sees at most
    ``2W + 1`` frames.
    """
    frames = (cu_seqlens[1:] - cu_seqlens[:-1]).double()  # (B,)
    n_tok = frames * cfg.tokens_per_frame
    d = float(cfg.width)
    if cfg.window is None:
        keys = n_tok
    else:
        keys = frames.clamp(max=2 * cfg.window + 1) * cfg.tokens_per_frame
    attention = float((4.0 * n_tok * keys * d).sum()) * cfg.depth
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
