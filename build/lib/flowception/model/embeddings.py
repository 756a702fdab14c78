"""Embedders of the DiT: time, class label, and the 3-axis rotary position embedding."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of ``1000 t`` followed by an MLP (spec section 7)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def sinusoidal(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """``[n] -> [n, dim]`` (DiT's ``timestep_embedding``), computed in fp32."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )  # (half,)
        args = 1000.0 * t.float()[:, None] * freqs[None]  # (n, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (n, dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = self.sinusoidal(t, self.freq_dim)  # (n, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (n, D)


class LabelEmbedder(nn.Module):
    """Class embedding with a learned null class (index ``num_classes``) for CFG dropout."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, labels: Tensor) -> Tensor:
        """``labels [B]`` int64 with ``-1`` = null -> ``[B, D]``."""
        if bool(((labels < -1) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"labels={labels.tolist()}: expected values in [-1, {self.num_classes})"
            )
        idx = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return self.table(idx)


class Rope3D(nn.Module):
    """Rotary embedding over (time, row, column), the head dimension split across axes.

    The time index is the frame's rank among the visible frames of its video
    (spec section 6); rows and columns are patch coordinates.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        spatial = 2 * (head_dim // 6)  # even share for rows and for columns
        self.dims = (head_dim - 2 * spatial, spatial, spatial)  # (time, row, col), all even
        if any(d % 2 for d in self.dims) or self.dims[0] <= 0:
            raise ValueError(f"head_dim={head_dim}: cannot split into 3 even rotary axes")
        for i, d in enumerate(self.dims):
            inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
            self.register_buffer(f"inv_freq_{i}", inv, persistent=False)

    def angles(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """``pos [T, 3]`` -> ``(cos, sin)``, each ``[T, 1, hd/2]`` in fp32."""
        parts = [
            pos[:, i : i + 1].float() * getattr(self, f"inv_freq_{i}")[None] for i in range(3)
        ]  # 3 x (T, d_i/2)
        ang = torch.cat(parts, dim=-1)[:, None, :]  # (T, 1, hd/2)
        return ang.cos(), ang.sin()

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate pairs ``(x[2i], x[2i+1])`` of ``x [T, heads, hd]`` by the angles, in fp32."""
        xf = x.float().unflatten(-1, (-1, 2))  # (T, heads, hd/2, 2)
        a, b = xf[..., 0], xf[..., 1]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (T, heads, hd/2, 2)
        return out.flatten(-2).to(x.dtype)
