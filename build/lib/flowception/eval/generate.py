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

import dataclasses
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
    ) -> None:
        from flowception.cluster.checkpoint import load_inference_model

        self.device = _device(device)
        self.net, cfg = load_inference_model(
            checkpoint, endpoint_url=endpoint_url, device=self.device
        )
        self.method = dataclasses.replace(cfg.method, **method_overrides)
        self.channels = cfg.model.in_channels
        self.seed = seed
        self.data_lengths = data_lengths

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
        if self.method.task != "unconditional":
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
        videos = [to_uint8(v) for v in out.videos]  # list of (F, H, W, 3)
        births = [b.numpy().astype(np.int64) for b in out.trace.birth]
        return {
            "key": np.asarray(keys, dtype=object),
            "video": _ragged(videos),
            "length": np.asarray([v.shape[0] for v in videos], dtype=np.int64),
            "birth": _ragged(births),
        }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of per-row arrays (Ray Data stores it as a variable-shaped tensor)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class FeatureActor:
    """Videos -> I3D features of the protocol clip plus per-video VBench-style metrics.

    Real clips start at a random offset seeded by (protocol seed, key), generated clips
    at frame 0 (the protocol's ``real_offset`` / ``fake_offset``). Videos shorter than
    the clip get ``has_clip = False`` (skipped and counted, never padded).
    """

    def __init__(self, eval_cfg: EvalConfig | dict, *, role: str, size: int | None = None) -> None:
        from flowception.eval.i3d import I3DFeatureExtractor

        self.cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.from_dict(eval_cfg)
        self.role = role
        self.extractor = I3DFeatureExtractor(
            self.cfg.detector,
            sha256=self.cfg.detector_sha256,
            size=size or self.cfg.protocol.resolution,
            device=_device(self.cfg.device),
            batch_size=self.cfg.batch_size,
        )

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
        subject = np.full(len(keys), np.nan)
        wanted = set(self.cfg.metrics)
        if has.any():
            stack = np.stack([c for c in clips if c is not None])  # (b, T, H, W, C)
            feats[has] = self.extractor.features(stack)
            if self.role == "fake" and "subject_consistency" in wanted:
                subject[has] = vm.subject_consistency(
                    self.extractor, stack, endpoint=self.cfg.subject_endpoint
                )
        out = {
            "key": np.asarray(keys, dtype=object),
            "length": np.asarray([v.shape[0] for v in videos], dtype=np.int64),
            "has_clip": has,
            "features": feats,
            "subject_consistency": subject,
        }
        if self.role == "fake":
            out.update(_video_metrics(videos, wanted))
        return out


def _video_metrics(videos: list[np.ndarray], wanted: set[str]) -> dict[str, np.ndarray]:
    """Per-video flicker, smoothness and dynamic degree (NaN where a video is too short)."""
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
            ("dynamic", lambda x: float(vm.dynamic_degree(x).is_dynamic)),
        ):
            metric = "dynamic_degree" if name == "dynamic" else name
            if metric not in wanted:
                continue
            try:
                cols[name][i] = fn(v)
            except ValueError:  # too few frames for this metric
                pass
    return cols
