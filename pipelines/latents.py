"""The VAE boundary: load a diffusers VAE from a local directory, name it by its bytes,
and map clips to latents and back.

Two kinds (``VaeKind``), both loaded with ``local_files_only=True`` (nothing is ever
downloaded; the directory is what ``save_pretrained`` wrote):

- ``image``: ``diffusers.AutoencoderKL`` applied frame by frame. One latent frame per
  video frame, so frame insertion means the same thing as in pixels (the default).
- ``video``: ``diffusers.AutoencoderKLLTXVideo`` (the paper's kind), causal in time with
  temporal compression ``r``: a clip of ``T = 1 + k r`` frames becomes ``T' = 1 + k``
  latent frames, so one latent frame stands for ``r`` video frames (the first for one).
  Clips of other lengths are cut to the longest ``1 + k r`` prefix.

Latents are stored and trained on *normalised*: ``(z - shift) * scaling_factor`` for the
image VAE (``shift_factor`` when its config has one), ``(z - latents_mean) *
scaling_factor / latents_std`` per channel for the video VAE (as diffusers' LTX
pipeline does). ``decode`` undoes it. The identity of a VAE is ``vae_sha256``: the
sha256 over every file of its directory (names and bytes), recorded in latent shards,
in the run's MLflow params and checkpoint config, and checked by ``flowception eval``.

    codec = VaeCodec.load("image", "/models/sd-vae-ft-ema")
    z = codec.encode(video)          # uint8 [T, H, W, C] -> float32 [T', c, h, w]
    x = codec.decode(z)              # float32 [T', c, h, w] -> float32 [T, C, H, W] in [-1, 1]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

VaeKind = Literal["image", "video"]
VAE_CLASSES: dict[str, str] = {"image": "AutoencoderKL", "video": "AutoencoderKLLTXVideo"}
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- #
#                                  Identity                                   #
# --------------------------------------------------------------------------- #


def check_vae_dir(path: str | None, what: str = "VAE directory") -> str:
    """``path`` as an absolute local directory holding a diffusers ``config.json``.

    Raises:
        FileNotFoundError: one line naming the path and what to do.
    """
    if not path:
        raise FileNotFoundError(f"{what}: not set; pass the local directory of a diffusers VAE")
    if "://" in path:
        raise FileNotFoundError(
            f"{what} {path!r}: must be a local directory (VAEs are never downloaded); copy it "
            "to every node first"
        )
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(full, CONFIG_NAME)):
        raise FileNotFoundError(
            f"{what} {path!r}: no {CONFIG_NAME} there; point it at a directory written by "
            "diffusers' save_pretrained"
        )
    return full


def vae_sha256(path: str) -> str:
    """sha256 over the files of a VAE directory: each relative name and its bytes' sha256,
    in name order (config and weights; hidden files are left out)."""
    root = check_vae_dir(path)
    outer = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            full = os.path.join(dirpath, name)
            inner = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    inner.update(chunk)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            outer.update(f"{rel}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def vae_geometry(kind: str, path: str) -> tuple[int, int, int, int]:
    """``(in_channels, latent_channels, spatial, temporal)`` compression of a VAE from its
    ``config.json`` alone (no weights loaded: the driver checks sizes with it).

    Raises:
        FileNotFoundError: no VAE there (``check_vae_dir``).
        ValueError: the directory holds the other kind of VAE.
    """
    if kind not in VAE_CLASSES:
        raise ValueError(f"VAE kind {kind!r}: expected one of {sorted(VAE_CLASSES)}")
    root = check_vae_dir(path)
    with open(os.path.join(root, CONFIG_NAME)) as f:
        cfg = json.load(f)
    cls_name = cfg.get("_class_name")
    if cls_name and cls_name != VAE_CLASSES[kind]:
        other = "video" if kind == "image" else "image"
        raise ValueError(
            f"VAE directory {path!r} holds a {cls_name}; VAE kind {kind!r} expects "
            f"{VAE_CLASSES[kind]} (use VAE kind {other!r})"
        )
    c_in, c_lat = int(cfg.get("in_channels", 3)), int(cfg.get("latent_channels", 4))
    if kind == "image":
        return c_in, c_lat, 2 ** (len(cfg.get("block_out_channels", [0])) - 1), 1
    scaling = sum(bool(x) for x in cfg.get("spatio_temporal_scaling", (True, True, True, False)))
    spatial = cfg.get("spatial_compression_ratio") or int(cfg.get("patch_size", 4)) * 2**scaling
    temporal = cfg.get("temporal_compression_ratio") or int(cfg.get("patch_size_t", 1)) * 2**scaling
    return c_in, c_lat, int(spatial), int(temporal)


@dataclass(frozen=True)
class VaeInfo:
    """What a latent shard set records about the VAE that made it (``index.json`` meta).

    Attributes:
        kind: ``image`` or ``video``.
        sha256: ``vae_sha256`` of its directory.
        in_channels: pixel channels ``C`` it encodes and decodes.
        latent_channels: ``c`` of one latent frame.
        spatial_compression: ``H / h``.
        temporal_compression: ``r``: video frames per latent frame (1 for ``image``).
        scaling_factor: the normalisation's scale (see the module docstring).
    """

    kind: str
    sha256: str
    in_channels: int
    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    scaling_factor: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from ``latent_frames`` (``1 + (T' - 1) r``)."""
        r = self.temporal_compression
        return latent_frames if r == 1 else (1 + (latent_frames - 1) * r if latent_frames else 0)

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames of a clip of ``video_frames`` (cut to ``1 + k r``)."""
        r = self.temporal_compression
        return video_frames if r == 1 else (1 + (video_frames - 1) // r if video_frames else 0)


# --------------------------------------------------------------------------- #
#                                   Codec                                     #
# --------------------------------------------------------------------------- #


class VaeCodec:
    """A loaded VAE of one kind: clips to normalised latents and back (module docstring).

    Args:
        kind: ``image`` or ``video``.
        path: local directory of the VAE.
        device: ``cpu``, ``cuda``, ... (``None``: CUDA when available).
        frames_per_call: frames per forward pass of the image VAE (memory bound).
    """

    def __init__(
        self, kind: str, path: str, device: str | None = None, *, frames_per_call: int = 16
    ) -> None:
        vae_geometry(kind, path)  # the directory and the kind, checked before loading
        self.path = check_vae_dir(path)
        try:
            import diffusers
        except ImportError as exc:
            raise ImportError("VAE latents need the vae extra: pip install -e '.[vae]'") from exc
        self.kind = kind
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cls = getattr(diffusers, VAE_CLASSES[kind])
        self.vae = (
            cls.from_pretrained(self.path, local_files_only=True, low_cpu_mem_usage=False)
            .to(self.device)
            .eval()
        )
        self.frames_per_call = frames_per_call
        cfg = self.vae.config
        self.scale = float(cfg.scaling_factor or 1.0)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        if kind == "video":
            c = cfg.latent_channels
            mean = getattr(self.vae, "latents_mean", torch.zeros(c))
            std = getattr(self.vae, "latents_std", torch.ones(c))
            self.mean = mean.float().view(1, c, 1, 1, 1).to(self.device)  # (1, c, 1, 1, 1)
            self.std = std.float().view(1, c, 1, 1, 1).to(self.device)
            temporal = int(self.vae.temporal_compression_ratio)
            spatial = int(self.vae.spatial_compression_ratio)
        else:
            temporal, spatial = 1, 2 ** (len(cfg.block_out_channels) - 1)
        self.info = VaeInfo(
            kind=kind,
            sha256=vae_sha256(self.path),
            in_channels=int(cfg.in_channels),
            latent_channels=int(cfg.latent_channels),
            spatial_compression=spatial,
            temporal_compression=temporal,
            scaling_factor=self.scale,
        )

    @classmethod
    def load(cls, kind: str, path: str, device: str | None = None) -> VaeCodec:
        return cls(kind, path, device)

    # -- pixels -> latents ----------------------------------------------------- #

    def pixels(self, video: np.ndarray) -> Tensor:
        """``uint8 [T, H, W, C]`` -> ``float32 [T, C_vae, H, W]`` in ``[-1, 1]`` on the device
        (grey repeated to RGB for a 3-channel VAE)."""
        if video.ndim != 4 or video.dtype != np.uint8:
            raise ValueError(f"video: expected uint8 [T, H, W, C], got {video.dtype} {video.shape}")
        c = self.info.in_channels
        if video.shape[-1] not in (1, c):
            raise ValueError(f"video has {video.shape[-1]} channels, the VAE encodes {c}")
        x = torch.from_numpy(np.ascontiguousarray(video)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, C, H, W)
        return x.expand(-1, c, -1, -1) if x.shape[1] != c else x  # (T, C_vae, H, W)

    @torch.no_grad()
    def encode(self, video: np.ndarray) -> np.ndarray:
        """A clip's posterior mean, normalised.

        Args:
            video: ``uint8 [T, H, W, C]``, ``H, W`` divisible by the spatial compression.

        Returns:
            ``float32 [T', c, H / s, W / s]`` with ``T' = latent_frames(T)``.
        """
        s = self.info.spatial_compression
        if video.shape[1] % s or video.shape[2] % s:
            raise ValueError(
                f"frames of {video.shape[1]}x{video.shape[2]}: not divisible by the VAE's "
                f"spatial compression {s}"
            )
        n = self.info.video_frames(self.info.latent_frames(video.shape[0]))
        x = self.pixels(video[:n])  # (T, C, H, W)
        if self.kind == "image":
            parts = [
                self.vae.encode(x[i : i + self.frames_per_call]).latent_dist.mode()
                for i in range(0, x.shape[0], self.frames_per_call)
            ]
            z = (torch.cat(parts) - self.shift) * self.scale  # (T, c, h, w)
        else:
            z = self.vae.encode(x.permute(1, 0, 2, 3)[None]).latent_dist.mode()  # (1, c, T', h, w)
            z = ((z - self.mean) * self.scale / self.std)[0].permute(1, 0, 2, 3)  # (T', c, h, w)
        return z.float().cpu().numpy()

    # -- latents -> pixels ----------------------------------------------------- #

    @torch.no_grad()
    def decode(self, latents: Tensor | np.ndarray) -> Tensor:
        """Normalised latents of one clip back to frames.

        Args:
            latents: ``[T', c, h, w]``.

        Returns:
            ``float32 [T, C, H, W]`` in ``[-1, 1]`` on the CPU, ``T = video_frames(T')``.
        """
        z = torch.as_tensor(np.asarray(latents) if not torch.is_tensor(latents) else latents)
        z = z.float().to(self.device)  # (T', c, h, w)
        if z.shape[0] == 0:
            s = self.info.spatial_compression
            return torch.zeros(0, self.info.in_channels, z.shape[2] * s, z.shape[3] * s)
        if self.kind == "image":
            z = z / self.scale + self.shift
            parts = [
                self.vae.decode(z[i : i + self.frames_per_call]).sample
                for i in range(0, z.shape[0], self.frames_per_call)
            ]
            x = torch.cat(parts)  # (T, C, H, W)
        else:
            z = z.permute(1, 0, 2, 3)[None] * self.std / self.scale + self.mean  # (1, c, T', h, w)
            x = self.vae.decode(z).sample[0].permute(1, 0, 2, 3)  # (T, C, H, W)
        return x.float().clamp(-1, 1).cpu()

    def decode_uint8(self, latents: Tensor | np.ndarray) -> np.ndarray:
        """``decode`` as ``uint8 [T, H, W, C]`` (the eval and video-file layout)."""
        x = self.decode(latents)  # (T, C, H, W)
        return ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (T, H, W, C)


# --------------------------------------------------------------------------- #
#                       Training data vs model (driver)                       #
# --------------------------------------------------------------------------- #


def check_training_data(data: Any, in_channels: int, frame_size: tuple[int, int]) -> Any:
    """The data config a run trains with, checked against its shards' ``index.json``
    before any Ray resource is taken; for latent shards ``vae_sha256`` is filled in.

    Args:
        data: the run's ``DataConfig``.
        in_channels: ``model.in_channels``.
        frame_size: ``model.frame_size``.

    Raises:
        ValueError: pixel shards with ``data.vae`` set or latents without it, another VAE
            kind, a model whose ``in_channels`` / ``frame_size`` differ from the latents'
            (the error names both), or a VAE whose sha256 differs from the shards'.
        FileNotFoundError: the VAE directory is missing.
    """
    from flowception.pipelines.dataset import latent_set

    latent = latent_set(data)
    where = f"data.shards={data.shards}"
    if latent is None:
        if data.vae != "none":
            raise ValueError(
                f"data.vae={data.vae!r}: {where} holds pixel shards (its index.json marks no "
                "latents); encode them with `flowception data encode` or set data.vae=none"
            )
        return data
    kind, sha = latent.vae_kind, latent.vae_sha256
    if data.vae == "none":
        raise ValueError(
            f"{where} holds latents of an {kind!r} VAE (sha256 {sha[:12]}); set data.vae={kind} "
            "and data.vae_dir to that VAE's directory"
        )
    if data.vae != kind:
        raise ValueError(f"data.vae={data.vae!r}: {where} holds latents of an {kind!r} VAE")
    if in_channels != latent.latent_channels:
        raise ValueError(
            f"model.in_channels={in_channels}: {where} holds latents with "
            f"{latent.latent_channels} channels; set model.in_channels={latent.latent_channels}"
        )
    if tuple(frame_size) != tuple(latent.latent_size):
        h, w = latent.latent_size
        raise ValueError(
            f"model.frame_size={list(frame_size)}: {where} holds latents of {h}x{w}; set "
            f"model.frame_size=[{h},{w}]"
        )
    mine = vae_sha256(check_vae_dir(data.vae_dir, f"data.vae_dir={data.vae_dir!r}"))
    if mine != sha:
        raise ValueError(
            f"data.vae_dir={data.vae_dir}: VAE sha256 {mine[:12]} differs from the one that "
            f"encoded {data.shards} ({sha[:12]}); point data.vae_dir at that VAE"
        )
    if data.vae_sha256 is not None and data.vae_sha256 != sha:
        raise ValueError(
            f"data.vae_sha256={data.vae_sha256[:12]}...: {where} was encoded by VAE {sha[:12]}"
        )
    return data.replace(vae_sha256=sha)


# --------------------------------------------------------------------------- #
#                        Toy VAEs (tests, CPU recipes)                        #
# --------------------------------------------------------------------------- #


def save_random_vae(kind: str, path: str, *, in_channels: int = 1, seed: int = 0) -> str:
    """A small real diffusers VAE of ``kind`` with random weights, saved with
    ``save_pretrained`` to ``path`` (nothing downloaded): ``image`` is an
    ``AutoencoderKL`` with 4 latent channels and spatial compression 2; ``video`` an
    ``AutoencoderKLLTXVideo`` with 4 latent channels, spatial compression 4 and temporal
    compression 2. For tests and ``configs/latent-cpu.yaml``: it reconstructs nothing."""
    import diffusers

    torch.manual_seed(seed)
    if kind == "image":
        vae = diffusers.AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels, latent_channels=4,
            block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32, scaling_factor=0.5,
        )  # fmt: skip
    elif kind == "video":
        vae = diffusers.AutoencoderKLLTXVideo(
            in_channels=in_channels, out_channels=in_channels, latent_channels=4,
            block_out_channels=(8,), decoder_block_out_channels=(8,),
            down_block_types=("LTXVideoDownBlock3D",), layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
            decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
            upsample_residual=(False,), upsample_factor=(1,), patch_size=2, patch_size_t=1,
        )  # fmt: skip
    else:
        raise ValueError(f"VAE kind {kind!r}: expected one of {sorted(VAE_CLASSES)}")
    vae.save_pretrained(path)
    return path
