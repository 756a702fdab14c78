"""Ray job submission: the same ``flowception train`` entrypoint, run on a Ray cluster.

    ray start --head --dashboard-host 0.0.0.0                  # or a KubeRay RayCluster
    flowception submit configs/demo-cpu.yaml --address http://HEAD:8265 --follow
    flowception submit configs/gpu-2x8.yaml --address http://HEAD:8265 \\
        data.shards=s3://BUCKET/k600/train cluster.storage_path=s3://BUCKET/runs
    flowception status raysubmit_XXXX --address http://HEAD:8265
    flowception logs raysubmit_XXXX --address http://HEAD:8265 --follow
    flowception stop raysubmit_XXXX --address http://HEAD:8265

``--address`` defaults to ``RAY_ADDRESS``. The job's ``runtime_env`` uploads this
checkout as the working directory (without ``.venv``, data, runs, caches) and pins
the project's dependencies to ``requirements/constraints.txt`` (``--no-pip`` when
the cluster image already has them; torch always comes from the image, since its
CPU/CUDA build is the image's choice). ``MLFLOW_TRACKING_URI`` and
``AWS_ENDPOINT_URL`` are forwarded when set; credentials never are (nodes get
them from their own environment or instance role).

Ray clusters with token authentication (the default for ``ray start`` since Ray
2.5x): the client reads ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``; when either
exists and ``RAY_AUTH_MODE`` is unset, ``RAY_AUTH_MODE=token`` is set for you.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from flowception.cluster.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", "runs", "mlflow", "mlruns", "data", "benchmarks/results", "*.egg-info",
            "__pycache__", ".pytest_cache", ".ruff_cache"]  # fmt: skip
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_REGION")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def pinned_requirements(root: Path = ROOT) -> list[str]:
    """``name==version`` for each dependency in ``pyproject.toml`` pinned in the constraints.

    torch is left out: the cluster image provides the CPU or CUDA build.
    """
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
        name, extras = m.group(1), m.group(2) or ""
        if _norm(name) == "torch" or _norm(name) not in pins:
            continue
        pinned = pins[_norm(name)]
        out.append(pinned.replace("==", f"{extras}==", 1))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_env(*, pip: bool = True, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's ``runtime_env``: working dir, pinned pip requirements, forwarded env vars."""
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env_vars.update(env or {})
    out: dict[str, Any] = {"working_dir": str(ROOT), "excludes": EXCLUDES}
    if pip:
        out["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    if env_vars:
        out["env_vars"] = env_vars
    return out


def _relative(config: str) -> str:
    """The config path relative to the checkout (the job's working directory) when inside it."""
    path = Path(config).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else config


def entrypoint(config: str, overrides: list[str]) -> str:
    """``python -m flowception.eval.cli train CONFIG OVERRIDES`` with the config relative to the checkout."""
    return " ".join(
        shlex.quote(p)
        for p in ["python", "-m", "flowception.eval.cli", "train", _relative(config), *overrides]
    )


def client(address: str | None) -> Any:
    """A ``JobSubmissionClient``, sending the Ray auth token when one is available."""
    from ray.job_submission import JobSubmissionClient

    try:  # Ray's own "use token auth if a token exists" switch; it also refreshes the
        # config Ray cached at import (setting RAY_AUTH_MODE afterwards is not seen).
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # older Ray: no token auth
        pass
    return JobSubmissionClient(address)


def submit(
    config: str,
    overrides: list[str],
    *,
    address: str | None,
    pip: bool = True,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Validate the config here, then submit the training job; returns the job id.

    A freshly started head answers "No available agent" for a while; the submission
    is retried for up to ``agent_wait_s`` seconds.

    Raises:
        ValueError / FileNotFoundError: the config is invalid (nothing is submitted).
    """
    cfg = load_config(config, overrides)  # fail before the cluster sees anything
    return submit_command(
        ["train", _relative(config), *overrides],
        address=address,
        pip=pip,
        env=env,
        submission_id=submission_id,
        metadata={"config_hash": cfg.hash(), "run_name": cfg.run_name()},
        agent_wait_s=agent_wait_s,
    )


def submit_command(
    args: list[str],
    *,
    address: str | None,
    pip: bool = True,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Submit ``python -m flowception.eval.cli ARGS`` (any ``flowception`` subcommand) as a Ray job.

    The caller validates its own config first. A freshly started head answers "No
    available agent" for a while; the submission is retried for up to ``agent_wait_s``.
    """
    jobs = client(address)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.submit_job(
                entrypoint=" ".join(
                    shlex.quote(p) for p in ["python", "-m", "flowception.eval.cli", *args]
                ),
                runtime_env=runtime_env(pip=pip, env=env),
                submission_id=submission_id,
                metadata=metadata or {},
            )
        except RuntimeError as exc:  # a head that just started has no job agent yet
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def status(job_id: str, *, address: str | None) -> str:
    """The job's status (``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``)."""
    return str(client(address).get_job_status(job_id).value)


def stop(job_id: str, *, address: str | None) -> bool:
    """Ask Ray to stop the job; ``True`` if it was running."""
    return bool(client(address).stop_job(job_id))


def follow(job_id: str, *, address: str | None, out: Any = None, poll_s: float = 2.0) -> str:
    """Print the job's logs until it ends; returns the final status."""
    import sys

    jobs = client(address)
    out = out or sys.stdout
    seen = 0
    while True:
        logs = jobs.get_job_logs(job_id)
        out.write(logs[seen:])
        out.flush()
        seen = len(logs)
        state = str(jobs.get_job_status(job_id).value)
        if state in TERMINAL:
            tail = jobs.get_job_logs(job_id)
            out.write(tail[seen:])
            return state
        time.sleep(poll_s)
