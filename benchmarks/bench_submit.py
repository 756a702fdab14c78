"""Time from ``flowception submit`` to the first training step on a two-node Ray cluster
on this machine, with the image's packages (default) and with ``--pip``.

    .venv/bin/python -m pytest -p tests.conftest benchmarks/bench_submit.py -s -q

(a pytest module so it reuses the tests' two-node cluster and moto S3 fixtures). Each
submission trains 1 step of the two-node test's tiny model (1 worker, S3 on moto, tracking
off) from a directory outside the checkout; the clock runs from the ``submit`` call to the
job log's first ``step 1 loss=...`` line, read with ``tail_job_logs``. Writes
``benchmarks/results/submit.json`` with the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from pathlib import Path

import yaml

from tests.cluster.test_two_node import _recipe

OUT = Path(__file__).resolve().parent / "results" / "submit.json"


def _options(pip: bool) -> argparse.Namespace:
    return argparse.Namespace(working_dir=None, shared_fs=False, pip=pip, runtime_env_json=None,
                              entrypoint_num_cpus=None, entrypoint_num_gpus=None,
                              entrypoint_resources=None, metadata_json=None, submission_id=None)  # fmt: skip


def test_submit_to_first_step(two_node, s3_bucket, tmp_path, monkeypatch):
    from flowception.cluster import submit
    from flowception.pipelines.sources import moving_mnist, write_clips

    write_clips(moving_mnist(8, size=32, min_frames=10, max_frames=10, seed=1),
                f"{s3_bucket}/mm/train", max_samples=4)  # fmt: skip
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    load_before, rows = os.getloadavg(), []
    for pip in (False, True):
        recipe = _recipe(s3_bucket)
        recipe["tracking"]["enabled"] = False
        recipe["cluster"].update(num_workers=1, cpus_per_worker=1, name=f"timing-{int(pip)}")
        recipe["steps"] = 1
        (user / "timing.yaml").write_text(yaml.safe_dump(recipe))
        start = time.monotonic()
        job = submit.submit("timing.yaml", [], address=two_node.address, options=_options(pip))

        async def follow(job: str = job, start: float = start) -> float | None:
            async for lines in submit.client(two_node.address).tail_job_logs(job):
                if re.search(r"step 1 \w+=", lines):  # the train loop's first step line
                    return time.monotonic() - start
            return None

        first = asyncio.run(follow())
        while (state := submit.status(job, address=two_node.address)) in ("PENDING", "RUNNING"):
            time.sleep(2)
        rows.append({"pip": pip, "submit_to_first_step_s": first, "state": state,
                     "submit_to_end_s": time.monotonic() - start})  # fmt: skip
        print(rows[-1], flush=True)
        assert state == "SUCCEEDED" and first is not None, submit.logs(
            job, address=two_node.address
        )[-3000:]
    OUT.write_text(json.dumps({"rows": rows, "load_average_before": load_before,
                               "load_average_after": os.getloadavg(), "cpus": os.cpu_count()},
                              indent=1))  # fmt: skip
