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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
