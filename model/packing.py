"""Left-packed visible frames of many videos as one variable-length sequence (spec section 6).

Only visible frames are computed. Each video's visible frames keep their order and
are packed to the left; a frame's temporal position is its rank among the visible
frames of its video. ``cu_seqlens`` (int32, ``[B + 1]``) delimits videos over frames,
and multiplied by tokens per frame, over tokens. No Python loop over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packed:
    """Index of a packed batch: which slot of which video every packed frame came from."""

    cu_seqlens: Tensor  # [B + 1] int32, frame offsets of each video
    video: Tensor  # [n] int64, video index of each packed frame
    slot: Tensor  # [n] int64, slot index in the padded batch
    rank: Tensor  # [n] int64, rank among the visible frames of its video
    num_slots: int  # F

    @property
    def num_videos(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_frames(self) -> int:
        return self.video.numel()

    @property
    def max_seqlen(self) -> int:
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max()) if self.num_videos else 0


def token_cu_seqlens(cu_seqlens: Tensor, tokens_per_frame: int) -> Tensor:
    """``cu_seqlens`` over tokens (int32 ``[B + 1]``) from the one over frames."""
    return (cu_seqlens * tokens_per_frame).to(torch.int32)


def pack_index(visible: Tensor) -> Packed:
    """Build the packed index of the ``True`` slots of ``visible`` ``[B, F]``."""
    if visible.dim() != 2 or visible.dtype != torch.bool:
        raise ValueError(
            f"visible: expected bool [B, F], got {visible.dtype} {tuple(visible.shape)}"
        )
    b, f = visible.shape
    video, slot = visible.nonzero(as_tuple=True)  # (n,), (n,) in row-major = video then slot order
    counts = visible.sum(1)  # (B,)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=visible.device)
    cu[1:] = counts.cumsum(0)
    rank = torch.arange(video.numel(), device=visible.device) - cu[:-1].long()[video]
    return Packed(cu_seqlens=cu, video=video, slot=slot, rank=rank, num_slots=f)


def pack(frames: Tensor, index: Packed) -> Tensor:
    """Gather ``frames [B, F, ...]`` into ``[n, ...]`` in packed order."""
    return frames[index.video, index.slot]


def unpack(values: Tensor, index: Packed, fill: float = 0.0) -> Tensor:
    """Scatter ``values [n, ...]`` back to ``[B, F, ...]``; slots not in the index get ``fill``."""
    if values.shape[0] != index.num_frames:
        raise ValueError(
            f"values: expected {index.num_frames} packed frames, got {values.shape[0]}"
        )
    out = values.new_full((index.num_videos, index.num_slots, *values.shape[1:]), fill)
    out[index.video, index.slot] = values
    return out


def check_cu_seqlens(cu_seqlens: Tensor, total: int, name: str = "cu_seqlens") -> None:
    """Raise ``ValueError`` unless ``cu_seqlens`` is int32 ``[B + 1]``, starts at 0, is
    non-decreasing and ends at ``total``."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"{name}: expected shape [B + 1] with B >= 1, got {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"{name}: expected int32, got {cu_seqlens.dtype}")
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != total:
        raise ValueError(
            f"{name}={cu_seqlens.tolist()}: must start at 0 and end at the packed length {total}"
        )
    if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError(f"{name}={cu_seqlens.tolist()}: must be non-decreasing")


def ranks_from_cu_seqlens(cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    """``(video, rank)`` of every packed frame from ``cu_seqlens`` alone, each ``[n]`` int64."""
    counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (B,)
    video = torch.repeat_interleave(torch.arange(counts.numel(), device=cu_seqlens.device), counts)
    rank = torch.arange(video.numel(), device=cu_seqlens.device) - cu_seqlens[:-1].long()[video]
    return video, rank


def nearest_context_on_left(is_context: Tensor, rank: Tensor) -> Tensor:
    """Per packed frame, the packed index of the nearest context frame at or left of it in
    its own video, or ``-1`` when there is none, ``[n]`` int64. ``rank`` is each frame's
    rank in its video (``ranks_from_cu_seqlens``).

    Frames are packed in their original order (spec section 6), so "left" is "earlier".
    """
    idx = torch.arange(is_context.numel(), device=is_context.device)  # (n,)
    last = torch.cummax(torch.where(is_context, idx, torch.full_like(idx, -1)), dim=0).values
    start = idx - rank  # (n,) first packed frame of each frame's video
    return torch.where(last >= start, last, torch.full_like(last, -1))


def token_positions(rank: Tensor, grid: tuple[int, int]) -> Tensor:
    """Per-token ``(time, row, col)`` positions for packed frames, ``[n * N, 3]`` float.

    Tokens of a frame are its ``gh * gw`` patches in row-major order followed by the
    rate token, which sits at the frame's centre (spec section 7).
    """
    gh, gw = grid
    rows = torch.arange(gh, device=rank.device).repeat_interleave(gw).float()  # (gh*gw,)
    cols = torch.arange(gw, device=rank.device).repeat(gh).float()  # (gh*gw,)
    rows = torch.cat([rows, rows.new_tensor([(gh - 1) / 2])])  # (N,)
    cols = torch.cat([cols, cols.new_tensor([(gw - 1) / 2])])  # (N,)
    n_tok = rows.numel()
    time = rank.float().repeat_interleave(n_tok)  # (n*N,)
    return torch.stack([time, rows.repeat(rank.numel()), cols.repeat(rank.numel())], dim=1)
