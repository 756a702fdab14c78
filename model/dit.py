"""The Flowception DiT over packed visible frames (spec section 7).

Read top to bottom: helpers, transformer block, final layers, model. Shapes use
``n`` packed frames, ``N`` tokens per frame (patches + 1 rate token), ``T = n N``
packed tokens, ``D`` width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from flowception.model.attention import FramePattern, packed_attention
from flowception.model.config import ModelConfig
from flowception.model.embeddings import LabelEmbedder, Rope3D, TimestepEmbedder
from flowception.model.packing import (
    check_cu_seqlens,
    nearest_context_on_left,
    ranks_from_cu_seqlens,
    token_cu_seqlens,
    token_positions,
)

RATE_LOGIT_CLAMP = (-20.0, 10.0)  # spec E16, applied to the rate (not to the training logit)


@dataclass(frozen=True)
class ModelOutput:
    """Per packed frame: velocity ``[n, C, H, W]``, raw rate output ``l`` and rate ``lambda`` ``[n]``."""

    velocity: Tensor
    rate_logit: Tensor
    rate: Tensor


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation in fp32: ``x [n, N, D]``, ``shift/scale [n, D]`` per frame."""
    out = x.float() * (1.0 + scale.float()[:, None]) + shift.float()[:, None]
    return out.to(x.dtype)


# --------------------------------------------------------------------------- #
#                               Transformer block                             #
# --------------------------------------------------------------------------- #


class Block(nn.Module):
    """Pre-norm block: attention (QK-norm, 3D RoPE) and GELU MLP, each gated by AdaLN-zero."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor], attn: dict) -> Tensor:
        """``x [n, N, D]``, ``c [n, D]`` -> ``[n, N, D]``."""
        n, ntok, d = x.shape
        mod = self.adaLN_modulation(c).float().chunk(6, dim=1)  # 6 x (n, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        h = modulate(self.norm1(x), shift_a, scale_a).reshape(n * ntok, d)  # (T, D)
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(1)  # 3 x (T, heads, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = Rope3D.rotate(q, *rope), Rope3D.rotate(k, *rope)
        o = packed_attention(q, k, v, **attn).reshape(n, ntok, d)  # (n, N, D)
        x = x + (gate_a[:, None] * self.proj(o).float()).to(x.dtype)
        h = modulate(self.norm2(x), shift_m, scale_m)
        return x + (gate_m[:, None] * self.mlp(h).float()).to(x.dtype)


# --------------------------------------------------------------------------- #
#                                 Final layers                                #
# --------------------------------------------------------------------------- #


class VelocityHead(nn.Module):
    """Final AdaLN + linear back to ``p * p * C`` per patch."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, p = cfg.width, cfg.patch_size
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * cfg.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (n, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (n, P, p*p*C)


class RateHead(nn.Module):
    """MLP on the rate token's final hidden state: one scalar ``l`` per frame (spec E16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.width
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(self.norm(h)).squeeze(-1)  # (n,)


# --------------------------------------------------------------------------- #
#                                     Model                                   #
# --------------------------------------------------------------------------- #


class DiT(nn.Module):
    """Flowception DiT: ``(x, t, cu_seqlens) -> (velocity, rate)`` on packed frames."""

    def __init__(self, cfg: ModelConfig, *, rate_init: float = 1.0):
        """``rate_init``: the rate ``lambda`` every frame starts with (the trainer passes the
        training law's mean ``k`` target, ``model.schedule.mean_insertion_target``)."""
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.width, cfg.patch_size, cfg.in_channels
        self.grid = (cfg.frame_size[0] // p, cfg.frame_size[1] // p)
        self.patch_embed = nn.Conv2d(2 * c, d, kernel_size=p, stride=p)
        self.rate_token = nn.Parameter(torch.zeros(d))
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d) if cfg.num_classes > 0 else None
        self.rope = Rope3D(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.velocity_head = VelocityHead(cfg)
        self.rate_head = RateHead(cfg)
        self.pattern = FramePattern(
            tokens_per_frame=cfg.tokens_per_frame,
            window=cfg.window,
            causal=cfg.attention == "causal",
        )
        self.initialize_weights(rate_init)

    def initialize_weights(self, rate_init: float = 1.0) -> None:
        """Xavier linears; zero AdaLN output layers and both heads (AdaLN-zero, spec 7).

        The rate head's last layer has zero weights and the bias that makes every frame's
        rate ``rate_init`` (E16 inverted): the insertion loss then starts at its optimum
        for a constant rate instead of ``exp(0) = 1``, 2-3x the mean ``k`` target.
        """
        if not rate_init > 0:
            raise ValueError(f"rate_init={rate_init!r}: must be > 0")

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.rate_token, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.velocity_head.adaLN_modulation[-1], self.velocity_head.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.rate_head.mlp[-1].weight)
        nn.init.constant_(
            self.rate_head.mlp[-1].bias, logit_from_rate(rate_init, self.cfg.rate_head)
        )

    def _check(self, x: Tensor, t: Tensor, cu_seqlens: Tensor) -> None:
        c, (h, w) = self.cfg.in_channels, self.cfg.frame_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"x: expected [n, {c}, {h}, {w}], got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected [{x.shape[0]}], got {tuple(t.shape)}")
        check_cu_seqlens(cu_seqlens, x.shape[0])

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cu_seqlens: Tensor,
        *,
        is_context: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        """Velocity and insertion rate of every packed frame.

        Args:
            x: ``[n, C, H, W]`` packed visible frames of all videos.
            t: ``[n]`` per-frame times.
            cu_seqlens: ``[B + 1]`` int32 frame offsets of each video.
            is_context: ``[n]`` bool; these frames' clean values fill the context stream.
            labels: ``[B]`` int64 class labels, ``-1`` = null (classifier-free branch).

        Returns:
            ``ModelOutput`` with ``velocity [n, C, H, W]``, ``rate_logit`` and ``rate`` ``[n]``.
        """
        self._check(x, t, cu_seqlens)
        n, (gh, gw) = x.shape[0], self.grid
        video, rank = ranks_from_cu_seqlens(cu_seqlens)  # (n,), (n,)
        stream = torch.zeros_like(x)
        if is_context is not None and self.cfg.context_stream == "nearest_context":
            src = nearest_context_on_left(is_context, rank)  # (n,), -1 = none
            stream = torch.where((src >= 0)[:, None, None, None], x[src.clamp(min=0)], stream)
        elif is_context is not None:
            stream = torch.where(is_context[:, None, None, None], x, stream)
        h = self.patch_embed(torch.cat([x, stream], dim=1))  # (n, D, gh, gw)
        h = h.flatten(2).transpose(1, 2)  # (n, gh*gw, D)
        h = torch.cat([h, self.rate_token.expand(n, 1, -1).to(h.dtype)], dim=1)  # (n, N, D)

        c = self.t_embedder(t)  # (n, D)
        if self.y_embedder is not None:
            if labels is None:
                labels = torch.full(
                    (cu_seqlens.numel() - 1,), -1, dtype=torch.long, device=x.device
                )
            c = c + self.y_embedder(labels)[video]  # (n, D)

        ntok = self.cfg.tokens_per_frame
        rope = self.rope.angles(token_positions(rank, (gh, gw)))  # 2 x (T, 1, hd/2)
        attn = dict(
            cu_seqlens=token_cu_seqlens(cu_seqlens, ntok),
            max_seqlen=int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) * ntok,
            backend=self.cfg.attention_backend,
            pattern=self.pattern,
        )
        for block in self.blocks:
            h = block(h, c, rope, attn)  # (n, N, D)

        out = self.velocity_head(h[:, :-1], c)  # (n, gh*gw, p*p*C)
        velocity = self.unpatchify(out)  # (n, C, H, W)
        logit = self.rate_head(h[:, -1]).float()  # (n,)
        return ModelOutput(
            velocity=velocity, rate_logit=logit, rate=rate_from_logit(logit, self.cfg.rate_head)
        )

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[n, gh*gw, p*p*C] -> [n, C, H, W]``."""
        p, c, (gh, gw) = self.cfg.patch_size, self.cfg.in_channels, self.grid
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, gh * p, gw * p)


def logit_from_rate(rate: float, head: str) -> float:
    """Inverse of ``rate_from_logit`` for one positive rate (spec E16)."""
    if head == "exp":
        return math.log(rate)
    return rate + math.log(-math.expm1(-rate))  # softplus^-1(r) = log(e^r - 1), stable


def rate_from_logit(logit: Tensor, head: str) -> Tensor:
    """``lambda = exp(clamp(l))`` or ``softplus(l)`` (spec E16)."""
    if head == "exp":
        return torch.exp(logit.clamp(*RATE_LOGIT_CLAMP))
    return F.softplus(logit)
