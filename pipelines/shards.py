"""Shard storage: the fsspec boundary (local or ``s3://``), the project's one storage
retry policy, the shard writer and the shard listing.

Everything that touches S3 gets its filesystem from ``s3_filesystem`` here (the
checkpoint storage in ``cluster.storage`` too), configured by ``retry_policy``:
botocore's ``standard`` retry mode retries connection errors, timeouts, throttling
and 5xx answers of every request with exponential backoff and jitter, and s3fs's
own retries cover the body reads botocore has handed over. No retry loop of our
own. Shards are small (tens of MB), so a shard is read and written as one object.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flowception.pipelines import schema

log = logging.getLogger(__name__)
T = TypeVar("T")


# --------------------------------------------------------------------------- #
#                         Storage boundary and retries                        #
# --------------------------------------------------------------------------- #


RETRY_MODE = "standard"
"""botocore's retry mode: ``standard`` retries connection errors, timeouts, throttling
and 5xx with exponential backoff (``adaptive`` adds client-side rate limiting)."""
DEFAULT_ATTEMPTS = 5
"""Attempts per S3 request where no config says otherwise (checkpoints)."""
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


def retry_policy(attempts: int = DEFAULT_ATTEMPTS) -> dict[str, Any]:
    """The botocore ``Config`` arguments (s3fs ``config_kwargs``) of the retry policy.

    Args:
        attempts: tries per request, the first included (botocore's ``total_max_attempts``).
    """
    return {
        "retries": {"mode": RETRY_MODE, "total_max_attempts": attempts},
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }


@dataclass(frozen=True)
class Storage:
    """How to reach ``s3://`` URLs (credentials come from the environment, never here)."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    retries: int = DEFAULT_ATTEMPTS
    """Attempts per request (``retry_policy``)."""

    @classmethod
    def from_config(cls, cfg: Any) -> Storage:
        """From a ``DataConfig`` (endpoint resolved against the environment)."""
        return cls(cfg.endpoint_url(), cfg.s3_region, cfg.s3_anon, cfg.storage_retries)


def s3_filesystem(storage: Storage | None = None) -> Any:
    """An ``s3fs.S3FileSystem`` for ``storage`` with the retry policy (``retry_policy``).

    The region defaults to ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (botocore's lookup).
    """
    import s3fs

    storage = storage or Storage()
    client_kwargs = {"region_name": storage.region} if storage.region else {}
    fs = s3fs.S3FileSystem(
        anon=storage.anon,
        endpoint_url=storage.endpoint_url,
        client_kwargs=client_kwargs,
        config_kwargs=retry_policy(storage.retries),
    )
    fs.retries = storage.retries  # s3fs's tries for a response body (a class attribute)
    return fs


def filesystem(url: str, storage: Storage | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    Returns:
        ``(fs, path)``: s3fs for ``s3://bucket/key`` (path ``bucket/key``), the local
        filesystem otherwise (absolute path).
    """
    if url.startswith("s3://"):
        return s3_filesystem(storage), url[len("s3://") :].rstrip("/")
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), os.path.abspath(url)


def join(base: str, name: str) -> str:
    """``base/name`` for both local paths and ``s3://`` URIs."""
    return f"{base.rstrip('/')}/{name}"


def named(fn: Callable[[], T], what: str) -> T:
    """``fn()``, with a missing object's error naming the URL ``what`` (no retry here:
    the filesystem's retry policy already ran)."""
    try:
        return fn()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{what}: not found ({exc})") from None


def _check_bucket(fs: Any, path: str, url: str) -> None:
    if url.startswith("s3://"):
        bucket = path.split("/", 1)[0]
        try:  # not fs.exists: it reads a missing credential or a dead endpoint as "no bucket"
            fs.ls(bucket, refresh=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: bucket {bucket!r} does not exist") from None


def read_bytes(url: str, storage: Storage | None = None) -> bytes:
    """The whole object at ``url`` (local path or ``s3://``), retried on transient errors."""
    storage = storage or Storage()
    fs, path = filesystem(url, storage)

    def get() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    return named(get, url)


def write_bytes(url: str, data: bytes, storage: Storage | None = None) -> None:
    """Write ``data`` as the object at ``url``, all or nothing: an S3 put, or for local
    paths (parents created) a temporary file renamed into place, so a reader never sees
    half a file."""
    storage = storage or Storage()
    fs, path = filesystem(url, storage)
    local = not url.startswith("s3://")
    if local:
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        _check_bucket(fs, path, url)

    def put() -> None:
        if local:
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        with fs.open(path, "wb") as f:
            f.write(data)

    named(put, url)


def exists(url: str, storage: Storage | None = None) -> bool:
    """Whether the object or file at ``url`` exists (retried on transient errors)."""
    fs, path = filesystem(url, storage)
    return bool(fs.exists(path))


# --------------------------------------------------------------------------- #
#                                  Listing                                    #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its URL and, when an index lists it, sample count, size and checksum."""

    url: str
    num_samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


def parse_index(raw: bytes, where: str) -> dict[str, Any]:
    """``index.json`` checked: JSON, the project's format, a ``shards`` list of entries
    each with a ``name`` (a ``ValueError`` naming ``where`` and the key otherwise)."""
    try:
        index = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != schema.FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{where}: unknown format {got!r}, expected {schema.FORMAT!r}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) and "name" in e for e in shards):
        raise ValueError(
            f"{where}: key 'shards' must be a list of {{'name', 'num_samples', 'bytes', "
            f"'sha256'}} entries (got {type(shards).__name__}); rewrite it with "
            "`flowception data make-shards` or delete it to list *.tar"
        )
    return index


def list_shards(base: str, storage: Storage | None = None) -> list[ShardInfo]:
    """The shards under ``base``: from ``index.json`` if present, else ``*.tar`` sorted by name.

    Raises:
        FileNotFoundError: the directory, prefix or bucket does not exist, it holds no
            shard, or the index names a shard that is missing (the message names it).
    """
    storage = storage or Storage()
    fs, path = filesystem(base, storage)
    _check_bucket(fs, path, base)
    entries = named(lambda: fs.ls(path, detail=True), base)
    present = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
    if schema.INDEX_NAME in present:
        index = parse_index(
            read_bytes(join(base, schema.INDEX_NAME), storage), join(base, schema.INDEX_NAME)
        )
        shards = [
            ShardInfo(join(base, s["name"]), s.get("num_samples"), s.get("bytes"), s.get("sha256"))
            for s in index["shards"]
        ]
        missing = [s["name"] for s in index["shards"] if s["name"] not in present]
        if missing:
            raise FileNotFoundError(f"{base}: shard(s) listed in index.json are missing: {missing}")
        return shards
    names = sorted(n for n in present if n.endswith(schema.SHARD_SUFFIX))
    if not names:
        raise FileNotFoundError(f"{base}: no {schema.SHARD_SUFFIX} shards and no index.json")
    return [ShardInfo(join(base, n), bytes=present[n].get("size")) for n in names]


# --------------------------------------------------------------------------- #
#                                   Writer                                    #
# --------------------------------------------------------------------------- #


@dataclass
class ShardWriter:
    """Write samples into size-limited tar shards under a directory or ``s3://`` prefix.

    Use as a context manager; ``index.json`` is written last, on a clean exit, so a
    directory without its index was not finished.

    Example:
        >>> with ShardWriter("out/train", max_bytes=64 << 20) as w:  # doctest: +SKIP
        ...     w.add("000001", mp4_bytes, meta)
    """

    out: str
    max_bytes: int = 64 << 20
    """A shard is closed before the sample that would take it past this size."""
    max_samples: int = 1000
    """... or when it holds this many samples."""
    storage: Storage = field(default_factory=Storage)
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form description stored in ``index.json`` (source, split, size, ...)."""
    shards: list[dict[str, Any]] = field(default_factory=list, init=False)
    index: dict[str, Any] | None = field(default=None, init=False)
    """The index, once ``close`` wrote it."""
    _buf: io.BytesIO | None = field(default=None, init=False, repr=False)
    _tar: tarfile.TarFile | None = field(default=None, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)
    _keys: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_samples <= 0:
            raise ValueError(
                f"ShardWriter: max_bytes={self.max_bytes!r}, max_samples={self.max_samples!r}: "
                "must be > 0"
            )

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()

    def add(self, key: str, video: bytes, meta: schema.SampleMeta) -> None:
        """Append sample ``key`` (``{key}.json`` then ``{key}.mp4``, adjacent)."""
        if key in self._keys:
            raise ValueError(f"ShardWriter: duplicate sample key {key!r}")
        members = [
            (schema.member_name(key, schema.META_EXT), meta.to_json()),
            (schema.member_name(key, schema.VIDEO_EXT), video),
        ]
        self.add_members(key, members)

    def add_members(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Append one sample given as ``(member name, bytes)`` pairs (any extensions)."""
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        if self._tar is not None and (
            self._count >= self.max_samples or self._buf.tell() + size > self.max_bytes
        ):
            self._flush()
        if self._tar is None:
            self._buf = io.BytesIO()
            self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.GNU_FORMAT)
            self._count = 0
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._count += 1

    def _flush(self) -> None:
        assert self._tar is not None and self._buf is not None
        self._tar.close()
        data = self._buf.getvalue()
        name = schema.shard_name(len(self.shards))
        write_bytes(join(self.out, name), data, self.storage)
        self.shards.append(
            {
                "name": name,
                "num_samples": self._count,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        self._tar, self._buf = None, None

    def close(self) -> dict[str, Any]:
        """Write the last shard and ``index.json``; returns the index."""
        if self.index is not None:
            return self.index
        if self._tar is not None:
            self._flush()
        index = {
            "format": schema.FORMAT,
            "shards": self.shards,
            "num_samples": sum(s["num_samples"] for s in self.shards),
            "meta": self.meta,
        }
        write_bytes(
            join(self.out, schema.INDEX_NAME),
            json.dumps(index, indent=1, sort_keys=True).encode(),
            self.storage,
        )
        self.index = index
        return index
