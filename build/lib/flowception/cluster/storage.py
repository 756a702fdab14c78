"""Checkpoint storage: local directories or ``s3://`` through ``pyarrow.fs``, one retry helper.

``pyarrow.fs`` is what Ray Train persists checkpoints with, so the same filesystem
object serves the trainer (``RunConfig(storage_filesystem=...)``), the checkpoint
listing and the downloads. S3 credentials come from the environment (or the
instance role), never from a config; the endpoint from ``cluster.storage_endpoint_url``
or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it.

    Args:
        uri: a local path or ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint (MinIO, moto); ``None``: ``AWS_ENDPOINT_URL`` or AWS.

    Returns:
        ``(fs, path)``: ``path`` is ``bucket/prefix`` for S3 and absolute for local.
    """
    if uri.startswith("s3://"):
        import s3fs

        # pyarrow over s3fs rather than pyarrow's native S3: s3fs puts small files in one
        # request, while the native client's multipart uploads were refused at random by
        # the S3 test server (INTERNAL_FAILURE on CompleteMultipartUpload) under Ray.
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION", "us-east-1")
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, client_kwargs={"region_name": region})
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """Inverse of ``resolve`` (without the endpoint)."""
    return f"s3://{path}" if fs.type_name != "local" else path


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 3, delay: float = 0.5) -> T:
    """Call ``fn``; retry transient storage errors (``OSError`` but not missing files).

    Args:
        fn: the storage operation.
        what: the path it touches (named in logs and in the final error).
        attempts: total tries.
        delay: first backoff in seconds, doubled after each failure.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as exc:
            if attempt == attempts:
                raise OSError(f"{what}: {exc} (after {attempts} attempts)") from exc
            log.warning("storage: %s failed (%s), retry %d/%d", what, exc, attempt, attempts - 1)
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def list_dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    """Base names of the sub-directories of ``path`` (empty if it does not exist)."""
    info = with_retries(lambda: fs.get_file_info(path), what=path)
    if info.type == pafs.FileType.NotFound:
        return []
    entries = with_retries(
        lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), what=path
    )
    return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory)


def file_sizes(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``path`` (empty if it does not exist)."""
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    entries = with_retries(lambda: fs.get_file_info(sel), what=path)
    root = path.rstrip("/") + "/"
    return {e.path[len(root) :]: e.size for e in entries if e.type == pafs.FileType.File}


def read_text(fs: pafs.FileSystem, path: str) -> str:
    """The whole file as text."""

    def read() -> str:
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    return with_retries(read, what=path)


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Write a small file in one go, retried (S3 may fail a PUT transiently)."""

    def write() -> None:
        with fs.open_output_stream(path) as f:
            f.write(text.encode())

    with_retries(write, what=path)


def upload_files(
    local_dir: Path,
    fs: pafs.FileSystem,
    dest: str,
    names: Iterable[str],
    *,
    last: str | None = None,
) -> None:
    """Copy ``local_dir/name`` to ``dest/name`` for each name, ``last`` (the manifest) at the end.

    The manifest goes last so that a reader never sees it before the files it lists.
    """
    local = pafs.LocalFileSystem()
    with_retries(lambda: fs.create_dir(dest, recursive=True), what=dest)
    names = list(names)
    ordered = [n for n in names if n != last] + [n for n in names if n == last]
    for name in ordered:
        src, dst = str(local_dir / name), f"{dest}/{name}"
        if "/" in name:
            parent = dst.rsplit("/", 1)[0]
            with_retries(lambda p=parent: fs.create_dir(p, recursive=True), what=parent)
        with_retries(
            lambda s=src, d=dst: pafs.copy_files(
                s, d, source_filesystem=local, destination_filesystem=fs
            ),
            what=dst,
        )


def download_dir(fs: pafs.FileSystem, path: str, local_dir: Path) -> Path:
    """Copy everything under ``path`` into ``local_dir`` (created); returns ``local_dir``."""
    local_dir.mkdir(parents=True, exist_ok=True)
    if fs.type_name == "local" and Path(path).resolve() == local_dir.resolve():
        return local_dir
    with_retries(
        lambda: pafs.copy_files(
            path,
            str(local_dir),
            source_filesystem=fs,
            destination_filesystem=pafs.LocalFileSystem(),
        ),
        what=path,
    )
    return local_dir
