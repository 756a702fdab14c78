"""Checkpoint files that cannot run code when read, and their content digests.

A checkpoint often comes from a shared bucket, so reading one must never execute
what is in it. The project's own files are safetensors (tensors) plus JSON (the
rest of the structure): ``save_tree`` / ``load_tree`` round-trip a nested value of
dicts, lists, tuples, tensors, numpy arrays, numbers, strings and ``None`` (the EMA
state, the RNG states of every library). DeepSpeed writes pickles of its own; they
are read only inside ``no_code_loads()``, which forces ``torch.load`` to
``weights_only=True`` (also where DeepSpeed asks for full unpickling) and
admits the few DeepSpeed types its files hold (``deepspeed_safe_globals``).

    save_tree({"decay": 0.999, "shadow": net.state_dict()}, "ema.safetensors")
    with no_code_loads():
        engine.load_checkpoint(path, tag="ds")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

TREE_KEY = "flowception.tree"
CHUNK = 8 << 20


# --------------------------------------------------------------------------- #
#                      Nested values <-> safetensors + JSON                   #
# --------------------------------------------------------------------------- #


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        # int64 holds every integer dtype numpy RNG states use (uint32 keys)
        arr = obj.astype(np.int64) if obj.dtype.kind in "iu" else obj
        tensors[key] = torch.from_numpy(np.ascontiguousarray(arr)).clone()
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"save_tree: dict keys must be str, got {list(obj)[:3]}")
        return {"__dict__": {k: _pack(v, tensors) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_tree: cannot store a {type(obj).__name__}")


def _unpack(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_unpack(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy().astype(np.dtype(node["dtype"]))
    if "__tuple__" in node:
        return tuple(_unpack(v, tensors) for v in node["__tuple__"])
    return {k: _unpack(v, tensors) for k, v in node["__dict__"].items()}


def save_tree(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as one safetensors file (the structure in its metadata)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(obj, tensors)
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(tree)})


def load_tree(path: str | Path) -> Any:
    """Inverse of ``save_tree``; reading runs no code (safetensors + JSON).

    Raises:
        ValueError: ``path`` is not a file ``save_tree`` wrote (named in the message).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if TREE_KEY not in meta:
        raise ValueError(f"{path}: no {TREE_KEY!r} metadata (not written by save_tree)")
    return _unpack(json.loads(meta[TREE_KEY]), tensors)


# --------------------------------------------------------------------------- #
#                      DeepSpeed's pickles, without code                      #
# --------------------------------------------------------------------------- #


def deepspeed_safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed 0.x puts in its checkpoint files (plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextlib.contextmanager
def no_code_loads(extra: list[Any] | None = None) -> Iterator[None]:
    """Every ``torch.load`` in the block is ``weights_only=True`` (even when the caller
    passes ``False``, as DeepSpeed does), admitting only DeepSpeed's plain-data types.

    A file holding anything else fails with ``pickle.UnpicklingError`` and runs nothing.
    """
    allowed = deepspeed_safe_globals() + list(extra or [])
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


# --------------------------------------------------------------------------- #
#                                  Digests                                    #
# --------------------------------------------------------------------------- #


def sha256_stream(stream: Any) -> str:
    """Hex sha256 of a readable binary stream, read in 8 MiB chunks."""
    h = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under the local dir ``root``."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            out[path.relative_to(root).as_posix()] = {
                "size": path.stat().st_size,
                "sha256": sha256_stream(f),
            }
    return out
