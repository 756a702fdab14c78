"""Checkpoint storage: local directories or ``s3://`` through ``pyarrow.fs``.

``pyarrow.fs`` is what Ray Train persists checkpoints with, so the same filesystem
object serves the trainer (``RunConfig(storage_filesystem=...)``), the checkpoint
listing, the uploads and the downloads. S3 goes through the project's one s3fs
filesystem (``pipelines.shards.s3_filesystem``) and so through its one retry policy:
every request, checkpoint writes included, retries connection errors with backoff,
and an error that outlasts the retries is raised to the caller (in a Ray Train
worker that fails the attempt, and ``cluster.max_failures`` decides what follows).

The one exception is the filesystem handed to Ray Train itself: its controller writes
its checkpoint registry (``checkpoint_manager_snapshot.json``) through it, and an error
there ends the run as a ``ControllerError`` that ``max_failures`` does not retry. It
therefore gets ``CONTROLLER_ATTEMPTS`` (4x the workers' attempts, about a minute of
backoff), so that an outage fails the worker's upload, which is retried, first.
Workers upload through a filesystem of their own with the normal policy.
S3 credentials come from the environment (or the instance role), never from a
config; the endpoint from ``cluster.storage_endpoint_url`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from flowception.pipelines import shards

log = logging.getLogger(__name__)


CONTROLLER_ATTEMPTS = 4 * shards.DEFAULT_ATTEMPTS
"""Attempts per request for Ray Train's own storage writes (see the module doc)."""


def resolve(
    uri: str, endpoint_url: str | None = None, *, attempts: int = shards.DEFAULT_ATTEMPTS
) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it.

    Args:
        uri: a local path or ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint (MinIO, moto); ``None``: ``AWS_ENDPOINT_URL`` or AWS.
        attempts: tries per S3 request (the retry policy's ``total_max_attempts``).

    Returns:
        ``(fs, path)``: ``path`` is ``bucket/prefix`` for S3 and absolute for local.
    """
    if uri.startswith("s3://"):
        # pyarrow over s3fs rather than pyarrow's native S3: s3fs puts small files in one
        # request, while the native client's multipart uploads were refused at random by
        # the S3 test server (INTERNAL_FAILURE on CompleteMultipartUpload) under Ray.
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION", "us-east-1")
        fs = shards.s3_filesystem(
            shards.Storage(endpoint_url=endpoint, region=region, retries=attempts)
        )
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """Inverse of ``resolve`` (without the endpoint)."""
    return f"s3://{path}" if fs.type_name != "local" else path


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """Whether ``path`` is a file."""
    return fs.get_file_info(path).type == pafs.FileType.File


def list_dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    """Base names of the sub-directories of ``path`` (empty if it does not exist)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory)


def file_sizes(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``path`` (empty if it does not exist)."""
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    entries = fs.get_file_info(sel)
    root = path.rstrip("/") + "/"
    return {e.path[len(root) :]: e.size for e in entries if e.type == pafs.FileType.File}


def read_text(fs: pafs.FileSystem, path: str) -> str:
    """The whole file as text."""

    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Write a small file in one go."""
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


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
    fs.create_dir(dest, recursive=True)
    names = list(names)
    ordered = [n for n in names if n != last] + [n for n in names if n == last]
    for name in ordered:
        src, dst = str(local_dir / name), f"{dest}/{name}"
        if "/" in name:
            parent = dst.rsplit("/", 1)[0]
            fs.create_dir(parent, recursive=True)
        pafs.copy_files(src, dst, source_filesystem=local, destination_filesystem=fs)


def download_dir(fs: pafs.FileSystem, path: str, local_dir: Path) -> Path:
    """Copy everything under ``path`` into ``local_dir`` (created); returns ``local_dir``."""
    local_dir.mkdir(parents=True, exist_ok=True)
    if fs.type_name == "local" and Path(path).resolve() == local_dir.resolve():
        return local_dir
    pafs.copy_files(
        path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local_dir
