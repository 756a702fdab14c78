"""From shard bytes to checked samples: a tolerant tar scan, grouping by key, and
the clip plan of each sample. Pure Python + NumPy (no Ray, no storage).

Bad data never raises here: every problem becomes a ``Sample`` with a ``skip``
reason (one of ``SKIP_REASONS``) that the reader counts and logs with the shard URL
and the key. A damaged tar header is resynchronised to the next valid header, so
the good samples after it are kept.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from flowception.pipelines import schema

SKIP_REASONS = (
    "corrupt_tar",  # unreadable tar header(s); the key is unknown
    "truncated",  # a member's data ends before its declared size
    "duplicate_key",  # a key seen again after its run ended
    "missing_json",
    "missing_video",
    "bad_json",  # not JSON or a field missing / of the wrong type
    "bad_video",  # PyAV cannot decode the MP4
    "too_short",  # fewer frames than min_frames after the stride
    "empty_shard",  # the shard holds no sample at all (0 bytes, all zeros): one per indexed sample
    "missing_from_shard",  # index.json lists more samples than the shard holds (cut short)
)
SHARD_ISSUES = (  # counted once per shard read, next to the per-sample reasons
    "size_mismatch",  # the shard's size differs from index.json's "bytes"
    "sha256_mismatch",  # its sha256 differs from index.json's "sha256"
    "count_mismatch",  # its sample count differs from index.json's "num_samples"
)
_ZERO = bytes(512)
_MAGIC_OFFSET = 257


@dataclass(frozen=True)
class Sample:
    """One sample of a shard, good or not.

    Attributes:
        key: sample key (``"?@offset"`` for damage whose key is unknown).
        parts: member bytes by extension (``{"mp4": ..., "json": ...}``).
        skip: ``None`` for a sample that passed the checks so far, else a reason.
        detail: a human-readable explanation of ``skip``.
        meta: the parsed ``{key}.json`` when it was valid.
    """

    key: str
    parts: dict[str, bytes]
    skip: str | None = None
    detail: str = ""
    meta: schema.SampleMeta | None = None


# --------------------------------------------------------------------------- #
#                                 Tar scan                                    #
# --------------------------------------------------------------------------- #


def _header(data: bytes, pos: int) -> tarfile.TarInfo | None:
    try:
        return tarfile.TarInfo.frombuf(data[pos : pos + 512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None


def _resync(data: bytes, pos: int) -> int | None:
    """Offset of the next valid header after ``pos`` (aligned or not), or ``None``."""
    find = pos + _MAGIC_OFFSET
    while True:
        hit = data.find(b"ustar", find)
        if hit < 0:
            return None
        start = hit - _MAGIC_OFFSET
        if start > pos and start + 512 <= len(data) and _header(data, start) is not None:
            return start
        find = hit + 1


def _pax_path(payload: bytes) -> str | None:
    for record in payload.decode("utf-8", "replace").splitlines():
        _, _, kv = record.partition(" ")
        k, _, v = kv.partition("=")
        if k == "path":
            return v
    return None


def scan_tar(data: bytes) -> Iterator[tuple[str, bytes | None, str]]:
    """Regular members of a tar held in memory, tolerating damage.

    Yields:
        ``(name, data, problem)``: ``problem`` is ``""`` for a good member,
        ``"truncated"`` (``data`` is ``None``) for a member cut short by the end of
        the file, ``"corrupt_tar"`` (name ``"?@offset"``) for unreadable headers.
    """
    pos, n, long_name = 0, len(data), None
    while pos + 512 <= n:
        if data[pos : pos + 512] == _ZERO:
            pos += 512
            continue
        info = _header(data, pos)
        if info is None:
            nxt = _resync(data, pos)
            yield f"?@{pos}", None, "corrupt_tar"
            if nxt is None:
                return
            pos = nxt
            continue
        start, end = pos + 512, pos + 512 + info.size
        name = long_name or info.name
        if end > n:
            yield name, None, "truncated"
            return
        payload = data[start:end]
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            long_name = _pax_path(payload)
        else:
            long_name = None
            if info.isreg():
                yield name, payload, ""
        pos = start + -(-info.size // 512) * 512
    if pos < n and data[pos:].strip(b"\0"):
        yield f"?@{pos}", None, "corrupt_tar"


def read_samples(data: bytes, media: str = schema.VIDEO_EXT) -> list[Sample]:
    """Group a shard's members into samples by key and check each one's metadata.

    Args:
        data: the whole tar file.
        media: extension of the payload member (``mp4``; ``npy`` in latent shards, whose
            missing payload is still counted as ``missing_video``).

    Returns:
        Samples in tar order; those with ``skip`` set are bad (reason + detail).
    """
    groups: list[tuple[str, dict[str, bytes], str, str]] = []  # key, parts, skip, detail
    seen: set[str] = set()
    for name, payload, problem in scan_tar(data):
        if problem == "corrupt_tar":
            groups.append((name, {}, problem, f"unreadable tar header at byte {name[2:]}"))
            continue
        split = schema.split_member(name)
        if split is None:
            continue
        key, ext = split
        if not groups or groups[-1][0] != key:
            if key in seen:
                groups.append((key, {}, "duplicate_key", f"key {key!r} is not contiguous"))
                continue
            seen.add(key)
            groups.append((key, {}, "", ""))
        _, parts, skip, _ = groups[-1]
        if problem == "truncated":
            groups[-1] = (key, parts, "truncated", f"member {name!r} ends before its size")
        elif not skip:
            parts[ext] = payload
    return [_check(key, parts, skip, detail, media) for key, parts, skip, detail in groups]


def _check(
    key: str, parts: dict[str, bytes], skip: str, detail: str, media: str = schema.VIDEO_EXT
) -> Sample:
    if skip:
        return Sample(key, parts, skip, detail)
    if schema.META_EXT not in parts:
        return Sample(key, parts, "missing_json", f"no {key}.{schema.META_EXT}")
    if media not in parts:
        return Sample(key, parts, "missing_video", f"no {key}.{media}")
    try:
        meta = schema.parse_meta(parts[schema.META_EXT])
    except ValueError as exc:
        return Sample(key, parts, "bad_json", str(exc))
    return Sample(key, parts, None, "", meta)


# --------------------------------------------------------------------------- #
#                                 Clip plan                                   #
# --------------------------------------------------------------------------- #


def sample_rng(seed: int, epoch: int, name: str) -> np.random.Generator:
    """A generator that depends only on ``(seed, epoch, name)`` (stable across processes)."""
    return np.random.default_rng([seed, epoch, zlib.crc32(name.encode("utf-8"))])


def plan_clip(
    total: int,
    *,
    max_frames: int,
    min_frames: int,
    stride: int,
    random_start: bool,
    rng: np.random.Generator | None = None,
) -> tuple[int, int] | None:
    """Where a clip starts and how many frames it has.

    The clip takes frames ``start, start + stride, ...``: as many as fit, at most
    ``max_frames``; ``start`` is uniform over the offsets where that many fit.

    Args:
        total: frames in the source video.
        max_frames: maximum clip length.
        min_frames: minimum clip length.
        stride: temporal stride.
        random_start: draw ``start`` from ``rng``; otherwise ``0``.
        rng: the sample's generator (see ``sample_rng``).

    Returns:
        ``(start, length)``, or ``None`` when the clip would be shorter than ``min_frames``.
    """
    length = min(max_frames, (total - 1) // stride + 1) if total > 0 else 0
    if length < min_frames:
        return None
    span = (length - 1) * stride + 1
    start = int(rng.integers(0, total - span + 1)) if random_start and rng is not None else 0
    return start, length


def shard_order(num: int, *, seed: int, epoch: int, salt: str, shuffle: bool) -> list[int]:
    """A permutation of ``range(num)`` that depends only on ``(seed, epoch, salt)``."""
    if not shuffle:
        return list(range(num))
    return [int(i) for i in sample_rng(seed, epoch, salt).permutation(num)]
