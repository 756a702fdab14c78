"""Training checkpoints (all ranks), resume, and the fp32 export that eval loads.

A checkpoint is a directory ``step_0001000/`` under the run directory
(``{cluster.storage_path}/{run name}/``, local or ``s3://``)::

    ds/                         DeepSpeed: model + ZeRO optimiser shards of every rank, LR schedule
    latest                      DeepSpeed's tag pointer ("ds")
    ema.safetensors             EMA weights (rank 0; full fp32 tensors)
    rng_rank000.safetensors ... torch / generator / numpy / python RNG states, one per rank
    cursor_rank000.json ...     data cursor (pipelines.batching.DataCursor) per rank
    config.yaml                 the TrainConfig (URIs redacted)
    manifest.json               written last: step, world size, config hash,
                                {file: {size, sha256}}

Complete means: ``manifest.json`` exists, is well formed, and every file it lists
exists with its size and sha256 (``verify``). Each rank stages its files in a local
temp dir renamed into place when done; the upload copies the manifest last. A crash
at any point leaves either no step directory or one without a (valid) manifest, and
flipped bytes fail the digest: every reader skips such a step (and logs why), so a
resume falls back to the newest step that verifies.

Reading a checkpoint runs no code: the project's files are safetensors and JSON, and
DeepSpeed's pickles are read with ``weights_only=True`` and an allow-list
(``cluster.safe_io.no_code_loads``).

    export_weights("runs/flowception-abc/step_0001000", "export/")   # model.safetensors, ...
    net, cfg = load_inference_model("export/")                         # EMA weights, eval mode
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from flowception.cluster import safe_io, storage
from flowception.cluster.config import TrainConfig
from flowception.model.config import ModelConfig
from flowception.redact import redact_text

log = logging.getLogger("flowception.checkpoint")

FORMAT = "flowception-checkpoint/2"
MANIFEST = "manifest.json"
EMA_FILE = "ema.safetensors"
DS_TAG = "ds"
STEP_RE = re.compile(r"^step_(\d{7,})$")
UNIVERSAL_DIR = "universal"
# what ``deepspeed.checkpoint.ds_to_universal`` requires in the client state (no TP/PP here)
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def step_dir_name(step: int) -> str:
    """``step_0001000``."""
    return f"step_{step:07d}"


# --------------------------------------------------------------------------- #
#                         Writing (every rank)                                #
# --------------------------------------------------------------------------- #


def stage_rank_files(
    engine: Any,
    *,
    ema: Any,
    cfg: TrainConfig,
    step: int,
    rank: int,
    rng: dict[str, Any],
    cursor: dict[str, Any],
) -> Path:
    """Write this rank's part of checkpoint ``step`` into a fresh local staging dir.

    Collective: every rank must call it (DeepSpeed's save synchronises the ranks).
    Returns ``.../step_XXXXXXX.partial`` (rename it with ``finalize_local``).
    """
    root = Path(tempfile.mkdtemp(prefix=f"flowception-ckpt-r{rank}-"))
    tmp = root / f"{step_dir_name(step)}.partial"
    tmp.mkdir()
    # the universal-checkpoint info lets a resize re-partition the ZeRO optimiser state
    engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={"step": step, **UNIVERSAL_INFO})
    safe_io.save_tree(rng, tmp / rng_name(rank))
    (tmp / f"cursor_rank{rank:03d}.json").write_text(json.dumps(cursor))
    if rank == 0:
        safe_io.save_tree(ema.state_dict(), tmp / EMA_FILE)
        (tmp / "config.yaml").write_text(redact_text(cfg.to_yaml()))
    return tmp


def rng_name(rank: int) -> str:
    """``rng_rank000.safetensors``."""
    return f"rng_rank{rank:03d}.safetensors"


def describe_staged(staged: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"size", "sha256"}}`` of this rank's staged files (for the manifest)."""
    return safe_io.describe_files(staged)


def write_manifest(
    staged: Path,
    files: dict[str, dict[str, Any]],
    *,
    cfg: TrainConfig,
    step: int,
    world_size: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``manifest.json`` listing ``files``: every rank's ``describe_staged``; ``extra``
    (the run's cumulative ``train_flops``) is stored beside them for the resume."""
    manifest = {
        "format": FORMAT,
        "step": step,
        "world_size": world_size,
        "zero_stage": cfg.deepspeed.zero_stage,
        "config_hash": cfg.hash(),
        "universal": True,  # DeepSpeed's universal_checkpoint_info is in ds/ (resizable)
        "time": time.time(),
        "files": dict(sorted(files.items())),
        **(extra or {}),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=1))


def finalize_local(staged: Path) -> Path:
    """Atomically rename ``step_X.partial`` to ``step_X`` (same filesystem)."""
    final = staged.with_name(staged.name.removesuffix(".partial"))
    os.replace(staged, final)
    return final


def upload(local_dir: Path, uri: str, endpoint_url: str | None = None) -> None:
    """Copy a finalised local checkpoint dir to ``uri`` (local or s3), manifest last."""
    fs, path = storage.resolve(uri, endpoint_url)
    names = sorted(storage.file_sizes(storage.pafs.LocalFileSystem(), str(local_dir)))
    storage.upload_files(local_dir, fs, path, names, last=MANIFEST)


# --------------------------------------------------------------------------- #
#                         Finding and reading                                 #
# --------------------------------------------------------------------------- #


def _problem(manifest: Any, present: dict[str, int]) -> str | None:
    """Why a parsed manifest does not describe a complete checkpoint (``None``: it does)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        return f"format {got!r}, expected {FORMAT!r}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "no 'files' in the manifest"
    for key in ("step", "world_size", "zero_stage"):
        if not isinstance(manifest.get(key), int):
            return f"manifest key {key!r} is {manifest.get(key)!r}, expected an int"
    for name, entry in files.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            return f"manifest entry {name!r} has no size and sha256"
        if name not in present:
            return f"{name}: missing"
        if present[name] != entry["size"]:
            return f"{name}: {present[name]} bytes, the manifest says {entry['size']}"
    return None


def read_manifest(fs: Any, path: str, *, quiet: bool = False) -> dict[str, Any] | None:
    """The manifest of the checkpoint at ``path`` if it is well formed and every file
    it lists is there with its size, else ``None`` (the reason logged unless ``quiet``
    or there is no manifest at all). Contents are checked by ``verify``."""
    try:
        manifest = json.loads(storage.read_text(fs, f"{path}/{MANIFEST}"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        manifest, problem = None, f"{MANIFEST} is not JSON ({exc})"
    else:
        problem = _problem(manifest, storage.file_sizes(fs, path))
    if problem is not None:
        if not quiet:
            log.warning("checkpoint %s skipped: %s", storage.uri_of(fs, path), problem)
        return None
    return manifest


def digest_problem(fs: Any, path: str, manifest: dict[str, Any]) -> str | None:
    """The first file under ``path`` whose sha256 differs from the manifest's, as a
    message; ``None`` when every file verifies."""
    for name, entry in sorted(manifest["files"].items()):
        with fs.open_input_stream(f"{path}/{name}") as f:
            actual = safe_io.sha256_stream(f)
        if actual != entry["sha256"]:
            return f"{name}: sha256 {actual[:12]}..., the manifest says {entry['sha256'][:12]}..."
    return None


def verified_manifest(fs: Any, path: str) -> dict[str, Any] | None:
    """``read_manifest`` plus every file's sha256; ``None`` (reason logged) otherwise."""
    manifest = read_manifest(fs, path)
    if manifest is None:
        return None
    problem = digest_problem(fs, path, manifest)
    if problem is not None:
        log.warning("checkpoint %s skipped: %s", storage.uri_of(fs, path), problem)
        return None
    return manifest


def _steps(fs: Any, path: str) -> list[tuple[int, str]]:
    found = [(STEP_RE.match(n), n) for n in storage.list_dirs(fs, path)]
    return sorted((int(m.group(1)), f"{path}/{n}") for m, n in found if m)


def list_checkpoints(run_uri: str, endpoint_url: str | None = None) -> list[tuple[int, str]]:
    """``[(step, uri)]`` of the complete, verified checkpoints of a run, oldest first.

    A step whose manifest is missing or malformed, or whose files are missing or do not
    match their size and sha256, is left out (and logged).
    """
    fs, path = storage.resolve(run_uri, endpoint_url)
    return [
        (step, storage.uri_of(fs, p))
        for step, p in _steps(fs, path)
        if verified_manifest(fs, p) is not None
    ]


def resolve_checkpoint(uri: str, endpoint_url: str | None = None) -> str | None:
    """A verified checkpoint's URI from a checkpoint or a run directory (its newest step
    that verifies); ``None`` if there is none."""
    fs, path = storage.resolve(uri, endpoint_url)
    if storage.is_file(fs, f"{path}/{MANIFEST}"):  # a checkpoint, not a run directory
        return storage.uri_of(fs, path) if verified_manifest(fs, path) is not None else None
    for _, p in reversed(_steps(fs, path)):  # newest first: stop at the first that verifies
        if verified_manifest(fs, p) is not None:
            return storage.uri_of(fs, p)
    return None


def manifest_of(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The manifest of the complete checkpoint at ``uri``.

    Raises:
        FileNotFoundError: no valid manifest there.
    """
    fs, path = storage.resolve(uri, endpoint_url)
    manifest = read_manifest(fs, path)
    if manifest is None:
        raise FileNotFoundError(f"{uri}: not a complete checkpoint")
    return manifest


def resume_point(
    run_uri: str, resume_from: str | None, endpoint_url: str | None = None
) -> str | None:
    """Where a (re)started run continues: its own latest checkpoint, else ``resume_from``.

    Raises:
        FileNotFoundError: ``resume_from`` is set but holds no complete checkpoint.
    """
    own = resolve_checkpoint(run_uri, endpoint_url)
    if own is not None or resume_from is None:
        return own
    found = resolve_checkpoint(resume_from, endpoint_url)
    if found is None:
        raise FileNotFoundError(f"checkpoint.resume_from={resume_from!r}: no complete checkpoint")
    return found


def fetch(uri: str, endpoint_url: str | None = None, dest: Path | None = None) -> Path:
    """A complete checkpoint as a local directory, verified: what is returned is what the
    manifest's digests describe. A remote one is downloaded to ``dest``, which the caller
    removes (``fetched`` does both); a local one is read in place unless ``dest`` is given.

    Raises:
        FileNotFoundError: no valid manifest, or a file does not match its digest.
        ValueError: a remote checkpoint and no ``dest``.
    """
    fs, path = storage.resolve(uri, endpoint_url)
    if fs.type_name != "local" and dest is None:
        raise ValueError(f"{uri}: a remote checkpoint needs dest= (or use checkpoint.fetched)")
    manifest = read_manifest(fs, path)
    if manifest is None:
        raise FileNotFoundError(f"{uri}: not a complete checkpoint (no valid {MANIFEST})")
    if dest is None:
        local = Path(path)
    else:
        local = storage.download_dir(fs, path, dest)
    local_fs = storage.pafs.LocalFileSystem()
    problem = digest_problem(local_fs, str(local), manifest)
    if problem is not None:
        raise FileNotFoundError(f"{uri}: not a complete checkpoint ({problem})")
    return local


@contextlib.contextmanager
def fetched(
    uri: str,
    endpoint_url: str | None = None,
    *,
    copy: bool = False,
    prefix: str = "flowception-fetch-",
) -> Iterator[Path]:
    """``fetch`` for the length of a ``with`` block: a remote checkpoint (with ``copy``, a
    local one too) is downloaded to a scratch folder named ``prefix...`` that is removed
    afterwards (also on error); otherwise a local one is read in place.
    """
    fs, path = storage.resolve(uri, endpoint_url)
    if fs.type_name == "local" and not copy:
        yield fetch(uri, endpoint_url)
        return
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield fetch(uri, endpoint_url, dest=scratch / Path(path).name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def merged_cursor(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The union of every rank's data cursor in a checkpoint (what the job consumed)."""
    from flowception.pipelines.batching import DataCursor

    fs, path = storage.resolve(uri, endpoint_url)
    manifest = manifest_of(uri, endpoint_url)
    names = [n for n in manifest["files"] if n.startswith("cursor_rank")]
    cursors = [
        DataCursor.from_dict(json.loads(storage.read_text(fs, f"{path}/{n}"))) for n in names
    ]
    return DataCursor.merge(cursors).to_dict()


def resize_problem(manifest: dict[str, Any], world_size: int, zero_stage: int) -> str | None:
    """Why a checkpoint cannot be resumed by ``world_size`` ranks at ``zero_stage``
    (``None``: it can). The ZeRO stage must match; a different world size needs ZeRO-0
    (whole optimiser state on every rank) or a checkpoint carrying DeepSpeed's universal
    checkpoint info (``needs_universal``)."""
    n, stage = manifest.get("world_size"), manifest.get("zero_stage")
    if stage != zero_stage:
        return (f"written with deepspeed.zero_stage={stage}; resume with "
                f"deepspeed.zero_stage={stage} (this run has {zero_stage})")  # fmt: skip
    if n != world_size and stage != 0 and not manifest.get("universal"):
        return (f"written by {n} workers at ZeRO-{stage} without DeepSpeed's universal "
                f"checkpoint info (an older checkpoint); resume with cluster.num_workers={n} "
                f"(this run has {world_size})")  # fmt: skip
    return None


def needs_universal(manifest: dict[str, Any], world_size: int) -> bool:
    """A ZeRO 1-3 checkpoint resumed by another world size: its optimiser partitions are
    re-cut through DeepSpeed's universal checkpoint (``to_universal``; the engine must be
    built with ``checkpoint.load_universal``)."""
    return manifest["world_size"] != world_size and manifest["zero_stage"] != 0


def to_universal(local_dir: Path) -> Path:
    """Convert the DeepSpeed part of a fetched checkpoint into DeepSpeed's universal format
    (``local_dir/universal/ds``: one fp32 file per parameter and optimiser moment, whole),
    which an engine of any data-parallel size loads. Reads the pickles as ``restore_rank``
    does (no code runs). Returns the directory to pass to ``engine.load_checkpoint``."""
    import argparse
    import io

    from deepspeed.checkpoint import ds_to_universal

    out = local_dir / UNIVERSAL_DIR
    args = argparse.Namespace(
        input_folder=str(local_dir / DS_TAG), output_folder=str(out / DS_TAG),
        num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
        inject_missing_state=False,
    )  # fmt: skip
    chatter = io.StringIO()  # the converter prints its stages and tqdm bars
    try:
        with (
            safe_io.no_code_loads(),
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            ds_to_universal.main(args)
    except Exception:
        log.error("ds_to_universal on %s failed:\n%s", local_dir, chatter.getvalue()[-4000:])
        raise
    log.info("converted %s to DeepSpeed's universal checkpoint", local_dir)
    return out


def restore_rank(
    engine: Any, *, ema: Any, local_dir: Path, rank: int, world_size: int
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Load a checkpoint into this rank's engine and EMA.

    A ZeRO-0 checkpoint loads into any world size; a ZeRO 1-3 one written by another world
    size is converted with ``to_universal`` (the engine was built with
    ``checkpoint.load_universal``; ``cluster.launch.check_resume`` refuses what cannot
    load before the workers start). A rank the checkpoint did not have gets ``None`` RNG
    states and an empty cursor.

    Returns:
        ``(step, rng states or None, cursor dict)`` of this rank.
    """
    manifest = json.loads((local_dir / MANIFEST).read_text())
    problem = resize_problem(manifest, world_size, manifest["zero_stage"])
    if problem is not None:
        raise ValueError(f"{local_dir}: {problem}")
    ds_dir = to_universal(local_dir) if needs_universal(manifest, world_size) else local_dir
    with safe_io.no_code_loads():  # DeepSpeed's pickles: tensors and allow-listed types only
        _, client = engine.load_checkpoint(str(ds_dir), tag=DS_TAG)
    if client is None:
        raise FileNotFoundError(f"{local_dir}/{DS_TAG}: DeepSpeed could not load it")
    ema.load_state_dict(safe_io.load_tree(local_dir / EMA_FILE))
    rng_file, cursor_file = (
        local_dir / rng_name(rank),
        local_dir / f"cursor_rank{rank:03d}.json",
    )
    rng = safe_io.load_tree(rng_file) if rng_file.exists() else None
    cursor = json.loads(cursor_file.read_text()) if cursor_file.exists() else {}
    return int(manifest["step"]), rng, cursor


# --------------------------------------------------------------------------- #
#                          Export and inference                               #
# --------------------------------------------------------------------------- #


def consolidated_state_dict(local_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint of any ZeRO stage (one process)."""
    if zero_stage == 0:
        with safe_io.no_code_loads():
            states = torch.load(
                local_dir / DS_TAG / "mp_rank_00_model_states.pt",
                map_location="cpu",
                weights_only=True,
            )
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_io.no_code_loads():  # zero_to_fp32 asks for full unpickling: refused
        state = get_fp32_state_dict_from_zero_checkpoint(str(local_dir), tag=DS_TAG)
    return {k: v.float() for k, v in state.items()}


def export_weights(
    checkpoint: str | Path, out_dir: str | Path, *, endpoint_url: str | None = None
) -> Path:
    """Write ``model.safetensors``, ``ema.safetensors``, ``config.yaml``, ``export.json``.

    Args:
        checkpoint: a complete checkpoint (or a run directory: its latest one).
        out_dir: local output directory (created).

    Returns:
        ``out_dir``.
    """
    from safetensors.torch import save_file

    uri = resolve_checkpoint(str(checkpoint), endpoint_url)
    if uri is None:
        raise FileNotFoundError(f"{checkpoint}: no complete checkpoint")
    with fetched(uri, endpoint_url) as local:
        manifest = json.loads((local / MANIFEST).read_text())
        cfg = TrainConfig.from_dict(yaml.safe_load((local / "config.yaml").read_text()))
        weights = consolidated_state_dict(local, manifest["zero_stage"])
        ema = safe_io.load_tree(local / EMA_FILE)["shadow"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"step": str(manifest["step"]), "config_hash": manifest["config_hash"]}
    save_file(
        {k: v.contiguous().clone() for k, v in weights.items()}, out / "model.safetensors", meta
    )
    ema = {
        k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in ema.items()
    }
    save_file(ema, out / "ema.safetensors", meta)
    (out / "config.yaml").write_text(redact_text(cfg.to_yaml()))
    info = {
        "source": redact_text(uri),
        "step": manifest["step"],
        "config_hash": manifest["config_hash"],
    }
    (out / "export.json").write_text(json.dumps(info, indent=1))
    return out


def model_config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    """``["width: 32 != 64", ...]`` for the fields where ``a`` and ``b`` differ."""
    return [
        f"{name}: {getattr(a, name)!r} != {getattr(b, name)!r}"
        for name in type(a).model_fields
        if getattr(a, name) != getattr(b, name)
    ]


def load_inference_model(
    path_or_uri: str | Path,
    *,
    weights: Literal["ema", "raw"] = "ema",
    expected: ModelConfig | None = None,
    endpoint_url: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, TrainConfig]:
    """A ``DiT`` in eval mode with exported weights, and the run's ``TrainConfig``.

    Args:
        path_or_uri: an export directory (``model.safetensors`` + ``config.yaml``), or a
            checkpoint / run directory, local or ``s3://`` (exported on the fly).
        weights: ``ema`` (default, what samples are drawn from) or ``raw``.
        expected: refuse weights trained with a different ``ModelConfig``.
        endpoint_url: S3 endpoint for ``s3://`` URIs.
        device: where the model goes.

    Raises:
        ValueError: the checkpoint's model config differs from ``expected`` (the
            differing fields are listed) or its tensors do not fit the DiT.
    """
    src = str(path_or_uri)
    fs, path = storage.resolve(src, endpoint_url)
    exported = storage.file_sizes(fs, path).get("model.safetensors") is not None
    if exported and fs.type_name == "local":
        return _inference_model(src, Path(path), weights, expected, device)
    with tempfile.TemporaryDirectory(prefix="flowception-export-") as out:
        if exported:
            storage.download_dir(fs, path, Path(out))
        else:
            export_weights(src, out, endpoint_url=endpoint_url)
        return _inference_model(src, Path(out), weights, expected, device)


def _inference_model(
    src: str, out: Path, weights: str, expected: ModelConfig | None, device: Any
) -> tuple[torch.nn.Module, TrainConfig]:
    """``load_inference_model`` of the export directory ``out``."""
    from safetensors.torch import load_file

    from flowception.model.dit import DiT

    cfg = TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    if expected is not None and expected != cfg.model:
        diff = "; ".join(model_config_diff(cfg.model, expected))
        raise ValueError(f"{src}: trained with a different model config ({diff})")
    net = DiT(cfg.model)
    state = load_file(str(out / ("ema.safetensors" if weights == "ema" else "model.safetensors")))
    missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{src}: weights do not fit the DiT (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    net.load_state_dict(state)
    return net.to(device).eval(), cfg
