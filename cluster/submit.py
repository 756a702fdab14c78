"""Ray job submission: ``flowception train|eval|sweep`` run on a Ray cluster, like ``ray job submit``.

    cd ~/my-experiment                                           # what gets uploaded
    flowception submit configs/demo-cpu.yaml --address http://HEAD:8265 --follow \\
        data.shards=s3://my-bucket/mm/train cluster.storage_path=s3://my-bucket/runs
    flowception submit configs/demo-cpu.yaml --address http://HEAD:8265 --shared-fs   # NFS everywhere
    flowception status raysubmit_XXXX --address http://HEAD:8265
    flowception logs raysubmit_XXXX --address http://HEAD:8265 --follow
    flowception stop raysubmit_XXXX --address http://HEAD:8265

What is sent, and what is checked before anything is sent:

- The working directory is the current directory (``--working-dir DIR`` to choose),
  uploaded by Ray (``.gitignore`` and ``EXCLUDES`` left out), as ``ray job submit`` does.
- The config file is read here, overrides applied, and the resolved YAML travels in the
  job's entrypoint (``python -m flowception.cluster.submit train --config-yaml ...``):
  the cluster never sees a path to it.
- Every path in the resolved config must be readable by the cluster: an ``s3://`` URI,
  or, with ``--shared-fs`` (every node mounts the same filesystem), a local path made
  absolute here. Anything else is a one-line error naming the key. Placeholders
  (``YOUR_BUCKET``) and S3 bucket names S3 would refuse are errors too. The I3D
  detector of ``eval``/``sweep`` must exist, checked from this machine.
- ``runtime_env``: by default the cluster image's packages (the image has the project
  installed, ``deploy/Dockerfile``); ``--pip`` installs the project's pinned requirements
  except Ray, torch and DeepSpeed, which only the image can match to its hardware.
  ``--runtime-env-json``, ``--entrypoint-num-cpus/-gpus/-resources`` and
  ``--metadata-json`` pass through with ``ray job submit``'s meaning.
- Provenance: the git commit (``+dirty`` with local changes) of the uploaded directory
  (else of this checkout) and the user are taken here and reach the MLflow run as
  ``mlflow.source.git.commit`` / ``mlflow.user`` (env ``FLOWCEPTION_GIT_COMMIT``,
  ``FLOWCEPTION_USER``; also in the job's metadata). ``MLFLOW_TRACKING_URI``,
  ``AWS_ENDPOINT_URL``, ``AWS_REGION`` are forwarded when set; credentials never are.

Ray clusters with token authentication: the client reads ``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", "runs", "mlruns", "outputs", "*.egg-info", "build", "__pycache__",
            ".pytest_cache", ".ruff_cache"]  # fmt: skip
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_REGION")
IMAGE_ONLY = ("ray", "torch", "deepspeed")  # built for the image's CUDA / CPU, never pip-installed
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
PLACEHOLDER = re.compile(r"YOUR_[A-Z0-9_]+")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
TRAIN_PATHS = ("data.shards", "cluster.storage_path", "checkpoint.resume_from")
EVAL_PATHS = ("checkpoint", "shards", "output_dir", "eval.detector", "eval.reference_cache")


# --------------------------------------------------------------------------- #
#                     Paths: what a cluster node can read                      #
# --------------------------------------------------------------------------- #


def check_value(key: str, value: Any) -> None:
    """Reject placeholders (``YOUR_BUCKET``) and S3 URIs whose bucket S3 would refuse."""
    if not isinstance(value, str):
        return
    if m := PLACEHOLDER.search(value):
        raise ValueError(f"{key}={value!r}: {m.group(0)} is a placeholder; put the real value")
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not BUCKET.match(bucket):
            raise ValueError(
                f"{key}={value!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, "
                "digits, '.', '-')"
            )


def cluster_path(key: str, value: str | None, *, shared_fs: bool) -> str | None:
    """``value`` as the cluster must see it: URIs unchanged, local paths absolute (``--shared-fs``).

    Raises:
        ValueError: a local path without ``--shared-fs`` (naming the key and what to use).
    """
    check_value(key, value)
    if value is None or ("://" in value and not value.startswith("file://")):
        return value
    if not shared_fs:
        raise ValueError(
            f"{key}={value!r} is a local path, which the Ray cluster's nodes cannot read; "
            "use an s3:// URI, or --shared-fs if every node mounts this filesystem"
        )
    return os.path.abspath(value.removeprefix("file://"))


def _get(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


def _walk(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _walk(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), tree)]


def resolve_paths(tree: dict[str, Any], keys: tuple[str, ...], *, shared_fs: bool) -> dict:
    """A copy of the config tree with ``keys`` made cluster-readable; every value checked."""
    tree = json.loads(json.dumps(tree))
    for key, value in _walk(tree):
        check_value(key, value)
    for key in keys:
        value = _get(tree, key)
        if value is not None:
            _set(tree, key, cluster_path(key, value, shared_fs=shared_fs))
    uri = _get(tree, "tracking.tracking_uri") or _get(tree, "tracking_uri")
    if uri and (uri.startswith(("file:", "/", ".")) or "://" not in uri and "/" in uri):
        raise ValueError(
            f"tracking uri {uri!r}: a local MLflow store; use the server's http(s) URI"
        )
    return tree


def require_exists(key: str, uri: str, endpoint_url: str | None = None) -> None:
    """Raise ``FileNotFoundError`` naming ``key`` unless ``uri`` is a file readable from here."""
    import pyarrow.fs as pafs

    from flowception.cluster import storage

    fs, path = storage.resolve(uri, endpoint_url)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(
            f"{key}={uri!r}: no such file (checked from this machine before submitting); "
            "`flowception assets i3d --out s3://...` writes it"
        )


# --------------------------------------------------------------------------- #
#                              runtime_env                                     #
# --------------------------------------------------------------------------- #


def pinned_requirements(root: Path = ROOT) -> list[str]:
    """``name==version`` of each dependency in ``pyproject.toml``, pinned by the constraints,
    without Ray, torch and DeepSpeed (``IMAGE_ONLY``)."""
    text = (root / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    deps = re.findall(r'"([^"]+)"', block.group(1)) if block else []
    pins = {}
    for line in (root / "requirements/constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[_norm(name)] = f"{name}=={version}"
    out = []
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", dep)
        name, extras = _norm(m.group(1)), m.group(2) or ""
        if name in IMAGE_ONLY or name not in pins:
            continue
        out.append(pins[name].replace("==", f"{extras}==", 1))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_env(
    *,
    working_dir: str | Path = ".",
    pip: bool = False,
    env: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job's ``runtime_env``: ``working_dir`` uploaded, env vars, ``pip`` when asked,
    and ``extra`` (``--runtime-env-json``) on top (its ``env_vars`` merged)."""
    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise FileNotFoundError(f"--working-dir {str(working_dir)!r}: not a directory")
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars.update(env or {})
    out: dict[str, Any] = {"working_dir": str(wd), "excludes": list(EXCLUDES)}
    if pip:
        out["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    extra = dict(extra or {})
    env_vars.update(extra.pop("env_vars", {}) or {})
    out.update(extra)
    if env_vars:
        out["env_vars"] = env_vars
    return out


def provenance(working_dir: str | Path = ".") -> dict[str, str]:
    """Git commit (``+dirty``) of ``working_dir`` (else of this checkout) and the user."""
    from flowception.cluster.tracking import git_commit

    commit = git_commit(Path(working_dir).resolve())
    if commit == "unknown":
        commit = git_commit(ROOT)
    return {"FLOWCEPTION_GIT_COMMIT": commit, "FLOWCEPTION_USER": getpass.getuser()}


# --------------------------------------------------------------------------- #
#                         The Jobs API client                                  #
# --------------------------------------------------------------------------- #


def client(address: str | None) -> Any:
    """A ``JobSubmissionClient``; a one-line ``ValueError`` when the head cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    if not address:
        raise ValueError("no Ray address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:  # Ray's own "use token auth if a token exists" switch (it refreshes Ray's cached config)
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # older Ray: no token auth
        pass
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(f"--address {address}: no Ray dashboard answers ({exc})") from None


def _job_call(job_id: str, address: str | None, fn: Callable[[Any], Any]) -> Any:
    """``fn(client)``, an unknown job id turned into a one-line ``ValueError``."""
    jobs = client(address)
    try:
        return fn(jobs)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise ValueError(f"job {job_id!r}: no such job at {address}") from None
        raise


def status(job_id: str, *, address: str | None) -> str:
    """The job's status (``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``)."""
    return str(_job_call(job_id, address, lambda c: c.get_job_status(job_id)).value)


def stop(job_id: str, *, address: str | None) -> bool:
    """Ask Ray to stop the job; ``True`` if it was running."""
    return bool(_job_call(job_id, address, lambda c: c.stop_job(job_id)))


def logs(job_id: str, *, address: str | None) -> str:
    """The job's logs so far."""
    return str(_job_call(job_id, address, lambda c: c.get_job_logs(job_id)))


def follow(job_id: str, *, address: str | None, out: Any = None) -> str:
    """Stream the job's logs (``tail_job_logs``) until it ends; returns the final status."""
    out = out or sys.stdout
    jobs = client(address)
    status(job_id, address=address)  # an unknown id is an error, not an empty stream

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return status(job_id, address=address)


def submit_job(
    entrypoint: list[str],
    *,
    address: str | None,
    options: argparse.Namespace | None = None,
    metadata: dict[str, str] | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Submit ``entrypoint`` (an argv) with the runtime env and resources of ``options``.

    ``options`` holds the parsed job options (``add_job_options``). A freshly started head
    answers "No available agent" for a while; the submission is retried for ``agent_wait_s``.
    """
    o = vars(options) if options is not None else {}
    wd = o.get("working_dir") or "."
    meta = {**provenance(wd), **(metadata or {}), **_json(o, "metadata_json")}
    env = {k: str(v) for k, v in meta.items() if k.startswith("FLOWCEPTION_")}
    renv = runtime_env(
        working_dir=wd, pip=o.get("pip", False), env=env, extra=_json(o, "runtime_env_json")
    )
    jobs = client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.submit_job(
                entrypoint=shlex.join(entrypoint),
                runtime_env=renv,
                submission_id=o.get("submission_id"),
                metadata={k: str(v) for k, v in meta.items()},
                entrypoint_num_cpus=o.get("entrypoint_num_cpus"),
                entrypoint_num_gpus=o.get("entrypoint_num_gpus"),
                entrypoint_resources=_json(o, "entrypoint_resources") or None,
            )
        except RuntimeError as exc:  # a head that just started has no job agent yet
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _json(options: dict[str, Any], name: str) -> dict[str, Any]:
    text = options.get(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--{name.replace('_', '-')}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name.replace('_', '-')}: expected a JSON object, got {text!r}")
    return value


def add_job_options(p: argparse.ArgumentParser, *, address_required: bool = False) -> None:
    """The options of a submitted job, named as in ``ray job submit``."""
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") if address_required else None,
        help="Ray dashboard, e.g. http://HEAD:8265"
        + (" (default: RAY_ADDRESS)" if address_required else "; runs here without it"),
    )
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument(
        "--working-dir", default=None, help="directory uploaded as the job's cwd (default: .)"
    )
    p.add_argument(
        "--shared-fs",
        action="store_true",
        help="every node mounts this filesystem: local paths are allowed (made absolute)",
    )
    p.add_argument(
        "--pip",
        action="store_true",
        help="install the pinned requirements (not ray/torch/deepspeed) instead of the image's",
    )
    p.add_argument("--runtime-env-json", default=None, help="runtime_env JSON merged on top")
    p.add_argument(
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs for the entrypoint"
    )
    p.add_argument(
        "--entrypoint-num-gpus", type=float, default=None, help="GPUs for the entrypoint"
    )
    p.add_argument(
        "--entrypoint-resources", default=None, help='custom resources JSON, e.g. {"head": 1}'
    )
    p.add_argument("--metadata-json", default=None, help="job metadata JSON (strings)")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")  # fmt: skip


# --------------------------------------------------------------------------- #
#                               Training                                       #
# --------------------------------------------------------------------------- #


def train_entrypoint(config_yaml: str) -> list[str]:
    """The job's argv: the resolved config inline, never a path."""
    return ["python", "-m", "flowception.cluster.submit", "train", "--config-yaml", config_yaml]


def resolved_train_config(config: str, overrides: list[str], *, shared_fs: bool) -> Any:
    """The config as the cluster will run it; every path checked (see the module docstring)."""
    import yaml

    from flowception.cluster.config import TrainConfig, load_config

    cfg = load_config(config, overrides)  # fail before the cluster sees anything
    tree = resolve_paths(cfg.to_dict(), TRAIN_PATHS, shared_fs=shared_fs)
    return TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(tree)))


def submit(
    config: str,
    overrides: list[str],
    *,
    address: str | None,
    options: argparse.Namespace | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Validate the config here, then submit the training job; returns the job id.

    Raises:
        ValueError / FileNotFoundError: bad config or path (nothing is submitted).
    """
    shared = bool(options is not None and options.shared_fs)
    cfg = resolved_train_config(config, overrides, shared_fs=shared)
    meta = {"FLOWCEPTION_SOURCE": f"flowception submit {Path(config).name}",
            "config_hash": cfg.hash(), "run_name": cfg.run_name()}  # fmt: skip
    return submit_job(
        train_entrypoint(cfg.to_yaml()),
        address=address,
        options=options,
        metadata=meta,
        agent_wait_s=agent_wait_s,
    )


def main(argv: list[str] | None = None) -> int:
    """The job side: ``train --config-yaml YAML`` runs ``flowception train`` on that config."""
    p = argparse.ArgumentParser(prog="python -m flowception.cluster.submit")
    p.add_argument("command", choices=["train"])
    p.add_argument("--config-yaml", required=True, help="the resolved config, inline")
    args = p.parse_args(argv)
    from flowception.cluster.cli import _train  # this package's own train command

    with tempfile.TemporaryDirectory(prefix="flowception-job-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(args.config_yaml)
        return _train(argparse.Namespace(config=str(path), overrides=[], print_config=False))


if __name__ == "__main__":
    raise SystemExit(main())
