"""One attention entry point over packed variable-length sequences, with backends.

Attention is full within a video and zero across videos (block-diagonal, spec
section 6), optionally restricted at frame level (local window ``W`` or block
causal, spec sections 7 and 10). Backends:

- ``flash``: ``flash_attn.flash_attn_varlen_func`` (CUDA, fp16/bf16, flash-attn installed);
- ``sdpa``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` on CUDA, else
  per-segment ``scaled_dot_product_attention``;
- ``cpu``: exact per-segment SDPA, one call per video (fastest on CPU in our probe);
- ``dense``: one SDPA over all tokens with a block-diagonal mask (the reference).

``auto`` picks flash, then sdpa, on CUDA and ``cpu`` elsewhere. Frame-level masks
are not expressible as token windows, so with ``window``/``causal`` the CUDA paths
fall back to per-segment SDPA with an explicit mask.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "flash", "sdpa", "cpu", "dense")


@dataclass(frozen=True)
class FramePattern:
    """Frame-level restriction of attention within a video."""

    tokens_per_frame: int  # N
    window: int | None = None  # attend to frames whose rank differs by at most this
    causal: bool = False  # attend only to frames of lower or equal rank

    @property
    def is_full(self) -> bool:
        return self.window is None and not self.causal

    def mask(self, num_frames: int, device: torch.device) -> Tensor:
        """``[n_tok, n_tok]`` bool (True = attend) for one video of ``num_frames`` frames."""
        r = torch.arange(num_frames, device=device).repeat_interleave(self.tokens_per_frame)
        diff = r[:, None] - r[None, :]  # query rank - key rank
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if self.window is not None:
            allowed &= diff.abs() <= self.window
        if self.causal:
            allowed &= diff >= 0
        return allowed


def flash_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_backend(backend: str, device: torch.device, pattern: FramePattern | None) -> str:
    """The concrete backend ``auto`` stands for on ``device``; validates the name."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend={backend!r}: expected one of {list(BACKENDS)}")
    full = pattern is None or pattern.is_full
    if backend == "flash" and not flash_available():
        raise ValueError("attention backend='flash': needs CUDA and the flash-attn package")
    if backend == "auto":
        if device.type != "cuda":
            return "cpu"
        return "flash" if (flash_available() and full) else "sdpa"
    return backend


def packed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    *,
    backend: str = "auto",
    pattern: FramePattern | None = None,
) -> Tensor:
    """Attention of packed sequences.

    Args:
        q, k, v: ``[T, heads, hd]`` packed tokens of all videos.
        cu_seqlens: ``[B + 1]`` int32 token offsets of each video.
        max_seqlen: tokens of the longest video.
        backend: one of ``BACKENDS``.
        pattern: optional frame-level window / causal pattern.

    Returns:
        ``[T, heads, hd]``.
    """
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v: expected equal [T, heads, hd], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if int(cu_seqlens[-1]) != q.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])}, but q has {q.shape[0]} tokens")
    name = resolve_backend(backend, q.device, pattern)
    full = pattern is None or pattern.is_full
    if name == "dense":
        return _dense(q, k, v, cu_seqlens, pattern)
    if name == "flash" and full:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    if name == "sdpa" and full and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    return _per_segment(q, k, v, cu_seqlens, pattern)


def _per_segment(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, pattern: FramePattern | None
) -> Tensor:
    """Exact path: one SDPA call per video (a loop over videos, not frames)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        mask = None
        if pattern is not None and not pattern.is_full:
            mask = pattern.mask((end - start) // pattern.tokens_per_frame, q.device)
        seg = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # 3 x (1, heads, L, hd)
        o = F.scaled_dot_product_attention(*seg, attn_mask=mask)  # (1, heads, L, hd)
        out[start:end] = o[0].transpose(0, 1)
    return out


def _dense(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, pattern: FramePattern | None
) -> Tensor:
    """Reference: one SDPA over all tokens with a block-diagonal (and pattern) mask."""
    t = q.shape[0]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=q.device), lengths)  # (T,)
    mask = seg[:, None] == seg[None, :]  # (T, T)
    if pattern is not None and not pattern.is_full:
        n = pattern.tokens_per_frame
        pos = torch.arange(t, device=q.device) - cu_seqlens[:-1].long()[seg]
        rank = pos // n  # (T,)
        diff = rank[:, None] - rank[None, :]
        if pattern.window is not None:
            mask &= diff.abs() <= pattern.window
        if pattern.causal:
            mask &= diff >= 0
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask
    )  # (1, heads, T, hd)
    return o[0].transpose(0, 1)
