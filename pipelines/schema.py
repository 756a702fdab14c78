"""The shard format: the one place that knows tar member names and metadata fields.

A shard is a tar file of samples; sample ``key`` is two members, next to each other:

- ``{key}.mp4``: the video (H.264 or MPEG-4 part 2, yuv420p; grayscale sources are
  stored with neutral chroma and reduced to one channel on read);
- ``{key}.json``: ``{"fps": float, "num_frames": int, "height": int, "width": int,
  "source": str}`` plus optional ``"caption": str`` and ``"label": int``.

A shard directory (or ``s3://`` prefix) also holds ``index.json``:
``{"format": FORMAT, "shards": [{"name", "num_samples", "bytes", "sha256"}, ...],
"num_samples": int, "meta": {...}}``. Directories without an index (e.g. tars made
with GNU ``tar``) are read by listing ``*.tar``.

*Latent shards* (``flowception data encode``) hold ``{key}.npy`` (``float16 [T', c, h,
w]``, normalised VAE latents, saved without pickle) instead of the MP4; their json is
the same object with ``num_frames, height, width`` counted in latent frames / latent
pixels, plus ``video_frames``, ``latent_shape``, ``scaling_factor``, ``vae_kind`` and
``vae_sha256``. Their ``index.json`` meta says so (``LatentSet``): ``{"kind": "latents",
"latent_channels", "latent_size": [h, w], "temporal_compression", "vae": {...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = "flowception-shards/1"
INDEX_NAME = "index.json"
SHARD_SUFFIX = ".tar"
VIDEO_EXT = "mp4"
META_EXT = "json"
LATENT_EXT = "npy"
NO_LABEL = -1

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "fps": (int, float),
    "num_frames": int,
    "height": int,
    "width": int,
    "source": str,
}
OPTIONAL: dict[str, type | tuple[type, ...]] = {"caption": str, "label": int}


@dataclass(frozen=True)
class SampleMeta:
    """The ``{key}.json`` of one sample."""

    fps: float
    num_frames: int
    height: int
    width: int
    source: str
    caption: str | None = None
    label: int | None = None

    def to_json(self) -> bytes:
        """UTF-8 JSON bytes, optional fields omitted when ``None``."""
        out: dict[str, Any] = {
            "fps": float(self.fps),
            "num_frames": int(self.num_frames),
            "height": int(self.height),
            "width": int(self.width),
            "source": self.source,
        }
        if self.caption is not None:
            out["caption"] = self.caption
        if self.label is not None:
            out["label"] = int(self.label)
        return json.dumps(out, sort_keys=True).encode("utf-8")


def parse_meta(raw: bytes) -> SampleMeta:
    """Parse and check ``{key}.json`` bytes.

    Raises:
        ValueError: not JSON, not an object, a required field missing, or a field of
            the wrong type or out of range (the message names the field).
    """
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name, kind in {**REQUIRED, **OPTIONAL}.items():
        if name not in obj:
            if name in REQUIRED:
                raise ValueError(f"missing field {name!r}")
            continue
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"field {name!r}={value!r}: wrong type")
    for name in ("fps", "num_frames", "height", "width"):
        if obj[name] <= 0:
            raise ValueError(f"field {name!r}={obj[name]!r}: must be > 0")
    return SampleMeta(
        fps=float(obj["fps"]),
        num_frames=obj["num_frames"],
        height=obj["height"],
        width=obj["width"],
        source=obj["source"],
        caption=obj.get("caption"),
        label=obj.get("label"),
    )


def member_name(key: str, ext: str) -> str:
    """Tar member name of one part of a sample, e.g. ``member_name("a", "mp4") == "a.mp4"``."""
    if not key or "." in key.rsplit("/", 1)[-1]:
        raise ValueError(f"sample key {key!r}: must be non-empty and contain no '.'")
    return f"{key}.{ext}"


def split_member(name: str) -> tuple[str, str] | None:
    """``"dir/abc.mp4" -> ("dir/abc", "mp4")``: key up to the first dot of the basename.

    Returns ``None`` for names without an extension (not part of any sample).
    """
    while name.startswith("./"):  # GNU tar run as `tar -C dir -cf x.tar .`
        name = name[2:]
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{head}/{stem}" if head else stem), ext


def shard_name(index: int) -> str:
    """File name of the ``index``-th shard written by the project."""
    return f"shard-{index:06d}{SHARD_SUFFIX}"


# --------------------------------------------------------------------------- #
#                                Latent shards                                #
# --------------------------------------------------------------------------- #

LATENT_KIND = "latents"
LATENT_FIELDS = ("video_frames", "latent_shape", "scaling_factor", "vae_kind", "vae_sha256")


@dataclass(frozen=True)
class LatentSet:
    """What ``index.json`` says about a latent shard set (its ``meta``).

    Attributes:
        latent_channels: ``c`` of one latent frame (the model's ``in_channels``).
        latent_size: ``(h, w)`` of one latent frame (the model's ``frame_size``).
        temporal_compression: video frames per latent frame (1: per-frame image VAE).
        vae: the VAE's description (``pipelines.latents.VaeInfo.to_dict()``), with
            ``kind`` and ``sha256``.
    """

    latent_channels: int
    latent_size: tuple[int, int]
    temporal_compression: int
    vae: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_sha256(self) -> str:
        return str(self.vae.get("sha256", ""))

    @property
    def vae_kind(self) -> str:
        return str(self.vae.get("kind", ""))

    def to_meta(self) -> dict[str, Any]:
        """The ``index.json`` ``meta`` entries."""
        return {
            "kind": LATENT_KIND,
            "latent_channels": self.latent_channels,
            "latent_size": list(self.latent_size),
            "temporal_compression": self.temporal_compression,
            "vae": dict(self.vae),
        }

    @classmethod
    def from_meta(cls, meta: Any, where: str) -> LatentSet | None:
        """The latent description of an index's ``meta``; ``None`` for pixel shards.

        Raises:
            ValueError: ``kind`` is ``latents`` but a field is missing or malformed.
        """
        if not isinstance(meta, dict) or meta.get("kind") != LATENT_KIND:
            return None
        try:
            h, w = (int(x) for x in meta["latent_size"])
            vae = dict(meta["vae"])
            out = cls(int(meta["latent_channels"]), (h, w), int(meta["temporal_compression"]), vae)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{where}: latent index meta is malformed ({type(exc).__name__}: {exc}); "
                "encode the shards again with `flowception data encode`"
            ) from None
        if not out.vae_sha256 or out.vae_kind not in ("image", "video"):
            raise ValueError(f"{where}: latent index meta lacks vae.kind / vae.sha256")
        return out


def latent_meta_json(
    meta: SampleMeta, latent_shape: tuple[int, ...], video_frames: int, vae: dict[str, Any]
) -> bytes:
    """``{key}.json`` of a latent sample: ``meta`` in latent units plus ``LATENT_FIELDS``."""
    t, _, h, w = (int(x) for x in latent_shape)
    out = json.loads(SampleMeta(meta.fps, t, h, w, meta.source, meta.caption, meta.label).to_json())
    out.update(
        video_frames=int(video_frames),
        latent_shape=[int(x) for x in latent_shape],
        scaling_factor=float(vae["scaling_factor"]),
        vae_kind=str(vae["kind"]),
        vae_sha256=str(vae["sha256"]),
    )
    return json.dumps(out, sort_keys=True).encode("utf-8")
