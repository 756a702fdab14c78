"""VBench dimensions computed with the networks VBench uses, from local weight files.

VBench (Huang et al. 2024, https://github.com/Vchitect/VBench) scores these dimensions
with pretrained image networks; they are here with the same architecture, preprocessing
and formula, loading the published checkpoints from a local path (never downloaded; each
file's sha256 is recorded with every number):

- ``subject_consistency``: DINO ViT-B/16 (``dino_vitb16_pretrain.pth`` of
  facebookresearch/dino, the ``torch.hub`` model VBench loads): every frame, shorter side
  resized to 224 (bilinear, no antialias, rounded to uint8 as torchvision does on uint8
  tensors), ``/255``, ImageNet normalisation; the CLS token after the final norm;
- ``background_consistency``: CLIP ViT-B/32 (OpenAI ``ViT-B-32.pt``, TorchScript or state
  dict): every frame, shorter side to 224 (bicubic, no antialias), centre crop 224,
  ``/255``, CLIP normalisation; ``encode_image``;
- ``aesthetic_quality``: CLIP ViT-L/14 (OpenAI ``ViT-L-14.pt``) with the LAION aesthetic
  linear head (``sa_0_4_vit_l_14_linear.pth``), both in one directory given as the
  weights: CLIP preprocessing as above, ``head(normalize(encode_image)) / 10`` averaged
  over the video's frames.

The consistency dimensions use :func:`eval.metrics.consistency_score` per video and
VBench's frame-weighted score ``sum(video_sim) / sum(T_i - 1)``; aesthetic quality is the
mean over videos (a video counts once: ``pairs = 1``), both via :func:`dimension_score`.

Not implemented (a config naming it is rejected): ``imaging_quality`` (MUSIQ via pyiqa).
The networks are written out here because ``timm`` and ``open_clip`` import
``torchvision``, whose PyPI wheel needs the CUDA build of torch; the state-dict key names
are the published ones, so the checkpoints load one-to-one (missing or unexpected keys and
wrong shapes are errors naming the file).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
DIMENSIONS: dict[str, str] = {
    "subject_consistency": "DINO ViT-B/16 (facebookresearch/dino dino_vitb16_pretrain.pth)",
    "background_consistency": "CLIP ViT-B/32 (OpenAI ViT-B-32.pt)",
    "aesthetic_quality": "LAION aesthetic head on CLIP ViT-L/14 (a directory holding "
    "ViT-L-14.pt and sa_0_4_vit_l_14_linear.pth)",
}
"""VBench dimensions computed with VBench's own network: name -> the weights to give."""
AESTHETIC_FILES = ("ViT-L-14.pt", "sa_0_4_vit_l_14_linear.pth")
NOT_IMPLEMENTED: dict[str, str] = {
    "imaging_quality": "MUSIQ (pyiqa needs torchvision, not installable with CPU torch)",
}
"""VBench dimensions that need weights and are not computed, with the reason."""


# ----------------------------------------------------------------------------- networks


class DinoBlock(nn.Module):
    """Pre-norm ViT block with DINO's parameter names (``attn.qkv``, ``mlp.fc1``...)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, heads, n, d_head)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)  # (B, n, D)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoViT(nn.Module):
    """DINO's ``VisionTransformer`` (ViT-B/16: width 768, depth 12, 12 heads); output: the
    normalised CLS token ``(B, D)`` (the hub model's head is the identity)."""

    def __init__(self, dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(DinoBlock(dim, dim // 64) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised -> ``(B, D)``."""
        x = self.patch_embed.proj(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1)
        x = x + _grid_pos(self.pos_embed, h, w)  # (B, 1 + h*w, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]  # (B, D)


class ClipBlock(nn.Module):
    """CLIP's ``ResidualAttentionBlock`` (QuickGELU, ``attn.in_proj_weight``, ``mlp.c_fc``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(dim, 4 * dim)
        self.mlp.c_proj = nn.Linear(4 * dim, dim)
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class ClipVisual(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` (ViT-B/32: width 768, 12 layers, patch 32,
    output 512); :meth:`forward` is ``encode_image``."""

    def __init__(
        self, dim: int = 768, depth: int = 12, patch: int = 32, grid: int = 7, out: int = 512
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, dim, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(dim))
        self.positional_embedding = nn.Parameter(torch.zeros(1 + grid * grid, dim))
        self.ln_pre = nn.LayerNorm(dim)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(ClipBlock(dim, dim // 64) for _ in range(depth))
        self.ln_post = nn.LayerNorm(dim)
        self.proj = nn.Parameter(torch.zeros(dim, out))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, S, S)`` normalised -> ``(B, out)`` image embeddings."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(len(x), 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, 1 + g*g, D)
        x = self.ln_pre(x).transpose(0, 1)  # (n, B, D): CLIP's sequence-first layout
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[0]) @ self.proj  # (B, out)


def _grid_pos(pos: Tensor, h: int, w: int) -> Tensor:
    """Position embeddings for an ``h x w`` patch grid (bicubic when it is not the trained one)."""
    n = pos.shape[1] - 1
    g = int(round(n**0.5))
    if (h, w) == (g, g):
        return pos
    grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


# ----------------------------------------------------------------------------- loading


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """``(state dict, sha256)`` of a local weights file: safetensors, a ``torch.save`` state
    dict (optionally under ``"state_dict"`` / ``"model"``) or a TorchScript archive."""
    import hashlib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: weights not found (they are never downloaded)")
    blob = p.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if blob[:2] != b"PK":
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(blob), sha
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{path}: not a safetensors, torch or TorchScript file ({exc})"
            ) from None
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    if any(n.partition("/")[2].startswith("code/") for n in names):  # TorchScript (OpenAI CLIP)
        state = torch.jit.load(io.BytesIO(blob), map_location="cpu").state_dict()
    else:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return dict(state), sha


def _build(kind: Literal["dino", "clip"], state: dict[str, Tensor], path: str) -> nn.Module:
    """The network whose sizes the state dict implies, with the weights loaded strictly."""
    if kind == "dino":
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        _require(state, ("pos_embed", "patch_embed.proj.weight"), path)
        dim, patch = state["pos_embed"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        net: nn.Module = DinoViT(dim, depth, patch, grid)
    else:
        if any(k.startswith("visual.") for k in state):
            state = {k[7:]: v for k, v in state.items() if k.startswith("visual.")}
        _require(state, ("positional_embedding", "conv1.weight", "proj"), path)
        dim, patch = state["conv1.weight"].shape[0], state["conv1.weight"].shape[-1]
        grid = int(round((state["positional_embedding"].shape[0] - 1) ** 0.5))
        depth = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
        net = ClipVisual(dim, depth, patch, grid, state["proj"].shape[1])
    want = net.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [k for k in want if k in state and state[k].shape != want[k].shape]
    if missing or extra or shapes:
        raise ValueError(
            f"{path}: not a {kind} checkpoint: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {shapes[:3]}"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def _require(state: dict[str, Tensor], keys: Sequence[str], path: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{path}: missing {missing}; expected the published checkpoint")


# ----------------------------------------------------------------------------- preprocessing


def resize_short_side(frames: Tensor, size: int, mode: Literal["bilinear", "bicubic"]) -> Tensor:
    """uint8-valued float ``(T, 3, H, W)`` -> shorter side ``size`` (torchvision ``Resize(size,
    antialias=False)`` on uint8 tensors: interpolate, round, clamp to [0, 255])."""
    h, w = frames.shape[-2:]
    short, long = min(h, w), max(h, w)
    other = int(size * long / short)
    out_hw = (size, other) if h <= w else (other, size)
    if (h, w) == out_hw:
        return frames
    out = F.interpolate(frames, size=out_hw, mode=mode, align_corners=False)
    return out.round().clamp(0, 255)  # (T, 3, H', W')


def preprocess(video: np.ndarray, kind: Literal["dino", "clip"]) -> Tensor:
    """uint8 ``(T, H, W, C)`` -> float32 ``(T, 3, H', W')`` as VBench feeds DINO / CLIP."""
    v = np.asarray(video)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] not in (1, 3):
        raise ValueError(f"video: expected uint8 (T, H, W, C), got {v.dtype} {v.shape}")
    x = torch.from_numpy(v).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)  # (T, 3, H, W)
    if kind == "dino":
        x, (mean, std) = resize_short_side(x, 224, "bilinear"), IMAGENET
    else:
        x, (mean, std) = resize_short_side(x, 224, "bicubic"), CLIP_NORM
        top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
        x = x[..., top : top + 224, left : left + 224]  # centre crop (T, 3, 224, 224)
    x = x / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# ----------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class VideoConsistency:
    """One video's VBench consistency: ``sum`` over its ``pairs = T - 1`` frames of the
    per-frame similarity; its score is ``sum / pairs``."""

    sum: float
    pairs: int


class ConsistencyDimension:
    """A VBench consistency dimension with its network, loaded once (one per Ray actor).

    Args:
        name: ``"subject_consistency"`` (DINO) or ``"background_consistency"`` (CLIP).
        weights: Local path of the published checkpoint (see :data:`DIMENSIONS`).
        device: Where the network runs.
        batch_frames: Frames per forward pass.
    """

    def __init__(
        self, name: str, weights: str | Path, *, device: str = "cpu", batch_frames: int = 16
    ) -> None:
        if name not in DIMENSIONS or name == "aesthetic_quality":
            why = NOT_IMPLEMENTED.get(name, "not a VBench consistency dimension")
            raise ValueError(f"VBench dimension {name!r}: {why}; computed: {sorted(DIMENSIONS)}")
        self.name, self.weights, self.device = name, str(weights), torch.device(device)
        self.kind: Literal["dino", "clip"] = "dino" if name == "subject_consistency" else "clip"
        state, self.sha256 = read_state_dict(weights)
        self.net = _build(self.kind, state, self.weights).to(self.device)
        self.batch_frames = batch_frames

    min_frames = 2

    @torch.inference_mode()
    def embed(self, video: np.ndarray) -> Tensor:
        """uint8 ``(T, H, W, C)`` -> ``(T, D)`` frame embeddings."""
        x = preprocess(video, self.kind)
        out = [
            self.net(x[i : i + self.batch_frames].to(self.device)).float().cpu()
            for i in range(0, len(x), self.batch_frames)
        ]
        return torch.cat(out)  # (T, D)

    def video(self, video: np.ndarray) -> VideoConsistency:
        """VBench's per-video sum of ``(max(0, cos prev) + max(0, cos first)) / 2``."""
        from flowception.eval.metrics import consistency_score

        f = self.embed(video)
        if len(f) < 2:
            raise ValueError(f"{self.name}: video needs >= 2 frames, got {len(f)}")
        return VideoConsistency(sum=consistency_score(f) * (len(f) - 1), pairs=len(f) - 1)

    def params(self) -> dict[str, str]:
        """What the numbers were computed with (MLflow params)."""
        return {
            f"vbench.{self.name}.model": DIMENSIONS[self.name],
            f"vbench.{self.name}.weights": self.weights,
            f"vbench.{self.name}.sha256": self.sha256,
        }


def dimension_score(videos: Sequence[VideoConsistency]) -> float:
    """VBench's frame-weighted dimension score ``sum(sum_i) / sum(pairs_i)``."""
    pairs = sum(v.pairs for v in videos)
    if pairs == 0:
        raise ValueError("dimension_score: no video with >= 2 frames")
    return float(sum(v.sum for v in videos) / pairs)


class AestheticDimension:
    """VBench's aesthetic quality: LAION's linear head on normalised CLIP ViT-L/14 image
    embeddings, divided by 10, averaged over frames (one actor holds both networks).

    Args:
        weights: Directory holding :data:`AESTHETIC_FILES`.
        device: Where the networks run.
        batch_frames: Frames per forward pass.
    """

    name = "aesthetic_quality"
    min_frames = 1

    def __init__(self, weights: str | Path, *, device: str = "cpu", batch_frames: int = 16):
        self.weights, self.device = str(weights), torch.device(device)
        clip_file, head_file = weight_files(self.name, weights)
        state, self.sha256 = read_state_dict(clip_file)
        self.net = _build("clip", state, str(clip_file)).to(self.device)
        head, self.head_sha256 = read_state_dict(head_file)
        if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != (1, self.out_dim):
            raise ValueError(
                f"{head_file}: expected nn.Linear({self.out_dim}, 1) weight/bias, got "
                f"{ {k: tuple(v.shape) for k, v in head.items()} }"
            )
        self.head = nn.Linear(self.out_dim, 1)
        self.head.load_state_dict({k: v.float() for k, v in head.items()})
        self.head.to(self.device).eval()
        self.batch_frames = batch_frames

    @property
    def out_dim(self) -> int:
        return int(self.net.proj.shape[1])

    @torch.inference_mode()
    def video(self, video: np.ndarray) -> VideoConsistency:
        """One video's score ``mean_t head(normalize(encode_image(f_t))) / 10`` (``pairs=1``)."""
        x = preprocess(video, "clip")
        scores = []
        for i in range(0, len(x), self.batch_frames):
            f = F.normalize(self.net(x[i : i + self.batch_frames].to(self.device)).float(), dim=-1)
            scores.append(self.head(f).squeeze(-1).cpu() / 10.0)  # (b,)
        return VideoConsistency(sum=float(torch.cat(scores).double().mean()), pairs=1)

    def params(self) -> dict[str, str]:
        return {
            f"vbench.{self.name}.model": DIMENSIONS[self.name],
            f"vbench.{self.name}.weights": self.weights,
            f"vbench.{self.name}.sha256": self.sha256,
            f"vbench.{self.name}.head_sha256": self.head_sha256,
        }


def weight_files(name: str, weights: str | Path) -> list[Path]:
    """The local files a dimension reads (aesthetic quality: two files in a directory)."""
    p = Path(weights)
    if name != "aesthetic_quality":
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(
            f"{weights}: aesthetic_quality needs a directory holding {list(AESTHETIC_FILES)}"
        )
    return [p / f for f in AESTHETIC_FILES]


def load_dimension(
    name: str, weights: str | Path, *, device: str = "cpu"
) -> ConsistencyDimension | AestheticDimension:
    """The network-backed scorer of a VBench dimension (``.video(video)``, ``.params()``)."""
    if name == "aesthetic_quality":
        return AestheticDimension(weights, device=device)
    return ConsistencyDimension(name, weights, device=device)
