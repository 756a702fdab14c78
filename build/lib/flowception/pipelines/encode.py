"""Optional latent-encoding stage: decoded rows -> latents, on a Ray actor pool, and
latent shards written back out for reuse.

    ds = build_dataset(cfg)                                  # decoded rows
    ds = encode_dataset(ds, cfg, actors=2)                   # + latent column
    write_latent_shards(ds, "s3://bucket/latents/train", storage)

Encoders (``DataConfig.encoder``):

- ``identity``: pixels as latents, ``float16 [T, C, H, W]`` in ``[-1, 1]``; CPU, used
  by tests and to exercise the stage end to end.
- ``vae``: a video VAE loaded from a local directory (``DataConfig.encoder_path``),
  by default diffusers' ``AutoencoderKLLTXVideo``, on one GPU per actor. Needs the
  ``vae`` extra (``pip install -e '.[vae]'``); nothing is downloaded at run time.
  Latents are the posterior mean, ``[T', c, H', W']``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from flowception.pipelines import schema
from flowception.pipelines.config import DataConfig
from flowception.pipelines.shards import ShardWriter, Storage


class LatentEncoder:
    """``map_batches`` callable class: adds ``latent`` to every ``ok`` row.

    Args:
        kind: ``"identity"`` or ``"vae"``.
        path: VAE directory (``vae`` only).
        vae_class: diffusers class name of the VAE.
    """

    def __init__(
        self, kind: str, path: str | None = None, vae_class: str = "AutoencoderKLLTXVideo"
    ):
        self.kind = kind
        self.vae = None
        if kind == "vae":
            import torch

            try:
                import diffusers
            except ImportError as exc:
                raise ImportError(
                    "encoder='vae' needs the vae extra: pip install -e '.[vae]'"
                ) from exc
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            cls = getattr(diffusers, vae_class)
            self.vae = cls.from_pretrained(path, local_files_only=True).to(self.device).eval()
        elif kind != "identity":
            raise ValueError(f"LatentEncoder: kind={kind!r}: expected 'identity' or 'vae'")

    def encode(self, video: np.ndarray) -> np.ndarray:
        """``uint8 [T, H, W, C]`` -> ``float16 [T', c, H', W']``."""
        x = video.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # (T, C, H, W)
        if self.vae is None:
            return x.astype(np.float16)
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x).to(self.device)
            t = t.permute(1, 0, 2, 3)[None]  # (1, C, T, H, W)
            if t.shape[1] == 1:
                t = t.expand(-1, 3, -1, -1, -1)  # the VAE expects RGB
            z = self.vae.encode(t).latent_dist.mean[0]  # (c, T', H', W')
            return z.permute(1, 0, 2, 3).float().cpu().numpy().astype(np.float16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        latents = np.empty(len(batch["key"]), dtype=object)
        for i, (status, video) in enumerate(zip(batch["status"], batch["video"])):
            ok = status == "ok"
            latents[i] = self.encode(video) if ok else np.zeros((0,), dtype=np.float16)
        return {**batch, "latent": latents}


def encode_dataset(ds: Any, cfg: DataConfig, *, actors: int = 1, batch_size: int = 8) -> Any:
    """``ds`` with a ``latent`` column computed by an actor pool of ``actors`` encoders."""
    import ray

    if cfg.encoder == "none":
        raise ValueError("DataConfig.encoder='none': choose 'identity' or 'vae' to encode")
    return ds.map_batches(
        LatentEncoder,
        fn_constructor_kwargs={"kind": cfg.encoder, "path": cfg.encoder_path},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if cfg.encoder == "vae" else 0,
    )


def write_latent_shards(
    ds: Any, out: str, storage: Storage | None = None, *, max_samples: int = 1000
) -> dict[str, Any]:
    """Write the ``ok`` rows of an encoded dataset as shards of ``{key}.npy`` + ``{key}.json``.

    Returns:
        The index written to ``out/index.json``.
    """
    with ShardWriter(out, max_samples=max_samples, storage=storage or Storage()) as w:
        w.meta = {"kind": "latents"}
        for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
            for i, key in enumerate(batch["key"]):
                if batch["status"][i] != "ok":
                    continue
                z = batch["latent"][i]  # (T', c, H', W')
                buf = io.BytesIO()
                np.save(buf, z)
                meta = json.dumps(
                    {
                        "num_frames": int(z.shape[0]),
                        "shape": list(z.shape),
                        "label": int(batch["label"][i]),
                        "source": str(batch["url"][i]),
                    }
                ).encode()
                w.add_members(
                    str(key),
                    [
                        (schema.member_name(str(key), schema.META_EXT), meta),
                        (schema.member_name(str(key), schema.LATENT_EXT), buf.getvalue()),
                    ],
                )
    return w.index
