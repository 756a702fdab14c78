"""Generation and feature stages of the eval job, as Ray Data actor classes.

One model (or one I3D) per actor, loaded once in ``__init__``; ``__call__`` maps a
batch of rows. Videos are ragged (Flowception chooses each length), so the
``video`` column holds one uint8 ``[T, H, W, C]`` array per row.

    ds.map_batches(GenerationActor, fn_constructor_kwargs=dict(checkpoint=..., ...),
                   concurrency=2, batch_size=8, num_gpus=1)   # one model per GPU actor
    ds.map_batches(FeatureActor, fn_constructor_kwargs=dict(eval_cfg=..., role="fake"),
                   concurrency=1, batch_size=8)
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from flowception.cluster.videos import to_uint8
from flowception.eval.config import EvalConfig


def _device(name: str) -> str:
    return (
        "cuda"
        if name == "auto" and torch.cuda.is_available()
        else ("cpu" if name == "auto" else name)
    )


def row_seed(seed: int, key: str) -> int:
    """A per-row seed that depends only on the run seed and the sample key."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") % (2**63)


def _rows(batch: dict[str, Any], column: str) -> list[Any]:
    values = batch[column]
    return list(values) if isinstance(values, (np.ndarray, list)) else [values]


class GenerationActor:
    """Checkpoint -> generated videos. Rows in: ``key``, ``label``, ``context``
    (uint8 ``[c, H, W, C]``, ``c = 0`` for unconditional) and optionally ``length`` (the
    real video's frame count); rows out add ``video`` (uint8 ``[F, H, W, C]``), ``length``
    and ``birth`` (``[F]`` sampler iteration).

    With a prescribed ``insertion_rule`` (spec E25) each row's ``length`` is its ``L*``;
    with ``data_lengths`` the fixed-length baselines generate that length too.

    Runs trained on latents (``vae``: ``{"kind", "dir"}`` of the run's VAE) take latent
    context rows (float ``[c, h, w, C_lat]``) and generate latents, decoded here to pixels
    before the I3D stage; ``length`` is then in video frames, ``latent_length`` in latent
    frames, and ``birth`` is repeated to every video frame a latent frame stands for.
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        method_overrides: dict[str, Any],
        seed: int = 0,
        device: str = "auto",
        endpoint_url: str | None = None,
        data_lengths: bool = False,
        vae: dict[str, str] | None = None,
    ) -> None:
        from flowception.cluster.checkpoint import load_inference_model
        from flowception.pipelines.latents import VaeCodec

        self.device = _device(device)
        self.net, cfg = load_inference_model(
            checkpoint, endpoint_url=endpoint_url, device=self.device
        )
        self.method = cfg.method.replace(**method_overrides)
        self.channels = cfg.model.in_channels
        self.seed = seed
        self.data_lengths = data_lengths
        self.vae = VaeCodec(vae["kind"], vae["dir"], self.device) if vae else None

    def _lengths(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``target_lengths`` / ``num_frames`` for ``generate`` from the ``length`` column."""
        prescribed = self.method.method == "flowception" and self.method.insertion_rule != "learned"
        fixed = self.method.method != "flowception" and self.data_lengths
        if not (prescribed or fixed):
            return {}
        if "length" not in batch:
            raise ValueError(
                f"insertion_rule={self.method.insertion_rule!r} / data_lengths: rows need a "
                "'length' column (the real video's frame count)"
            )
        lengths = [min(int(n), self.method.max_frames) for n in _rows(batch, "length")]
        return {"target_lengths": lengths} if prescribed else {"num_frames": lengths}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from flowception.model.generate import generate

        keys = [str(k) for k in _rows(batch, "key")]
        contexts = [np.asarray(c) for c in _rows(batch, "context")]
        labels = torch.as_tensor(np.asarray(_rows(batch, "label"), dtype=np.int64))
        use_labels = getattr(self.net.cfg, "num_classes", 0) > 0
        ctx = None
        if self.method.task != "unconditional" and self.vae is not None:
            ctx = [torch.as_tensor(c).permute(0, 3, 1, 2).float() for c in contexts]  # (c, C, h, w)
        elif self.method.task != "unconditional":
            ctx = [
                (torch.as_tensor(c).permute(0, 3, 1, 2).float() / 127.5 - 1.0)[:, : self.channels]
                for c in contexts
            ]  # list of (c, C, H, W) in [-1, 1]
        g = torch.Generator().manual_seed(row_seed(self.seed, "|".join(keys)))
        out = generate(
            self.net,
            method=self.method,
            num_videos=len(keys),
            generator=g,
            labels=labels if use_labels else None,
            context=ctx,
            return_trace=True,
            device=self.device,
            **self._lengths(batch),
        )
        births = [b.numpy().astype(np.int64) for b in out.trace.birth]
        latent_lengths = [int(v.shape[0]) for v in out.videos]
        if self.vae is not None:  # latents -> pixels before the I3D stage
            videos = [to_uint8(self.vae.decode(v)) for v in out.videos]  # list of (T, H, W, 3)
            births = [latent_to_frames(b, v.shape[0]) for b, v in zip(births, videos)]
        else:
            videos = [to_uint8(v) for v in out.videos]  # list of (F, H, W, 3)
        return {
            "key": np.asarray(keys, dtype=object),
            "video": _ragged(videos),
            "length": np.asarray([v.shape[0] for v in videos], dtype=np.int64),
            "latent_length": np.asarray(latent_lengths, dtype=np.int64),
            "birth": _ragged(births),
        }


def latent_to_frames(per_latent: np.ndarray, frames: int) -> np.ndarray:
    """A per-latent-frame value ``[T']`` spread over the ``frames`` video frames a causal
    video VAE decodes (latent 0 -> frame 0, latent ``k`` -> frames ``(k-1) r + 1 .. k r``);
    unchanged when ``frames == T'`` (image VAE)."""
    t = len(per_latent)
    if frames == t or t == 0:
        return per_latent
    r = (frames - 1) // max(t - 1, 1)
    idx = np.minimum((np.arange(frames) + r - 1) // max(r, 1), t - 1)  # frame -> latent
    return per_latent[idx]


class LatentDecodeActor:
    """Latent rows of a shard set (``pipelines.dataset``, ``video`` float ``[T', h, w, c]``)
    -> the same rows with ``video`` decoded by the run's VAE (uint8 ``[T, H, W, 3]``) and
    ``latent_length = T'``: the real side of FVD is the VAE's reconstruction of the
    eval clips, so FVD measures the generator, not the VAE."""

    def __init__(self, vae: dict[str, str], device: str = "auto") -> None:
        from flowception.pipelines.latents import VaeCodec

        self.vae = VaeCodec(vae["kind"], vae["dir"], _device(device))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        latents = [np.asarray(v) for v in _rows(batch, "video")]
        videos = [
            to_uint8(self.vae.decode(torch.as_tensor(z).permute(0, 3, 1, 2)))  # (T, H, W, 3)
            for z in latents
        ]
        out = dict(batch)
        out["video"] = _ragged(videos)
        out["latent_length"] = np.asarray([z.shape[0] for z in latents], dtype=np.int64)
        return out


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of per-row arrays (Ray Data stores it as a variable-shaped tensor)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class FeatureActor:
    """Videos -> I3D features of the protocol clip plus per-video metrics, for generated
    (``role="fake"``) and real (``role="real"``) videos alike, so every metric can be read
    against the data.

    Real clips start at a random offset seeded by (protocol seed, key), generated clips
    at frame 0 (the protocol's ``real_offset`` / ``fake_offset``). Videos shorter than
    the clip get ``has_clip = False`` (skipped and counted, never padded). Real rows also
    get ``static_features``: I3D of the video's first frame repeated to the clip length
    (the no-motion baseline). ``fvd_features=False`` skips both (cached reference).

    Columns per row: ``key, length, has_clip, features, static_features`` and, per wanted
    metric, ``temporal_flickering, motion_smoothness, dynamic, subject_consistency_i3d``
    (NaN when a video is too short) and ``vbench_<dim>_sum / vbench_<dim>_pairs`` for each
    dimension in ``vbench_weights`` (:func:`eval.vbench.load_dimension`).
    """

    def __init__(
        self,
        eval_cfg: EvalConfig | dict,
        *,
        role: str,
        size: int | None = None,
        fvd_features: bool = True,
    ) -> None:
        from flowception.eval.i3d import I3DFeatureExtractor
        from flowception.eval.metrics import vbench_stride
        from flowception.eval.vbench import load_dimension

        self.cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(eval_cfg)
        self.role = role
        wanted = set(self.cfg.metrics)
        self.fvd = fvd_features and "fvd" in wanted
        self.extractor = None
        if self.fvd or "subject_consistency" in wanted:
            self.extractor = I3DFeatureExtractor(
                self.cfg.detector,
                sha256=self.cfg.detector_sha256,
                size=size or self.cfg.protocol.resolution,
                device=_device(self.cfg.device),
                batch_size=self.cfg.batch_size,
            )
        self.vbench = {
            name: load_dimension(name, path, device=_device(self.cfg.device))
            for name, path in sorted(self.cfg.vbench_weights.items())
        }
        self.stride = vbench_stride(self.cfg.fps)

    def clip(self, video: np.ndarray, key: str) -> np.ndarray | None:
        p = self.cfg.protocol
        t = video.shape[0]
        if t < p.num_frames:
            return None
        offset = p.real_offset if self.role == "real" else p.fake_offset
        start = 0
        if offset == "random":
            start = int(
                np.random.default_rng(row_seed(p.seed, key)).integers(0, t - p.num_frames + 1)
            )
        return video[start : start + p.num_frames]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from flowception.eval import metrics as vm

        keys = [str(k) for k in _rows(batch, "key")]
        videos = [np.asarray(v) for v in _rows(batch, "video")]
        clips = [self.clip(v, k) for v, k in zip(videos, keys)]
        has = np.asarray([c is not None for c in clips])
        d = 400
        feats = np.full((len(keys), d), np.nan, dtype=np.float32)
        static = np.full((len(keys), d), np.nan, dtype=np.float32)
        subject = np.full(len(keys), np.nan)
        if has.any() and self.extractor is not None:
            stack = np.stack([c for c in clips if c is not None])  # (b, T, H, W, C)
            if self.fvd:
                feats[has] = self.extractor.features(stack)
                if self.role == "real":
                    firsts = np.repeat(stack[:, :1], stack.shape[1], axis=1)  # (b, T, H, W, C)
                    static[has] = self.extractor.features(firsts)
            if "subject_consistency" in self.cfg.metrics:
                subject[has] = vm.subject_consistency_i3d(
                    self.extractor, stack, endpoint=self.cfg.subject_endpoint
                )
        out = {
            "key": np.asarray(keys, dtype=object),
            "length": np.asarray([v.shape[0] for v in videos], dtype=np.int64),
            "has_clip": has,
            "features": feats,
            "static_features": static,
            "subject_consistency_i3d": subject,
        }
        out.update(_video_metrics(videos, set(self.cfg.metrics), self.stride))
        for name, dim in self.vbench.items():
            sums, pairs = np.full(len(videos), np.nan), np.zeros(len(videos), np.int64)
            for i, v in enumerate(videos):
                if len(v) >= dim.min_frames:
                    res = dim.video(v)
                    sums[i], pairs[i] = res.sum, res.pairs
            out[f"vbench_{name}_sum"], out[f"vbench_{name}_pairs"] = sums, pairs
        return out


def _video_metrics(
    videos: list[np.ndarray], wanted: set[str], stride: int
) -> dict[str, np.ndarray]:
    """Per-video flicker, smoothness and dynamic degree (NaN where a video is too short);
    dynamic degree on every ``stride``-th frame (VBench's ``round(fps / 8)``)."""
    from flowception.eval import metrics as vm

    cols = {
        "temporal_flickering": np.full(len(videos), np.nan),
        "motion_smoothness": np.full(len(videos), np.nan),
        "dynamic": np.full(len(videos), np.nan),
    }
    for i, v in enumerate(videos):
        for name, fn in (
            ("temporal_flickering", vm.temporal_flickering),
            ("motion_smoothness", vm.motion_smoothness),
            ("dynamic", lambda x: float(vm.dynamic_degree(x, stride=stride).is_dynamic)),
        ):
            metric = "dynamic_degree" if name == "dynamic" else name
            if metric not in wanted:
                continue
            try:
                cols[name][i] = fn(v)
            except ValueError:  # too few frames for this metric
                pass
    return cols
