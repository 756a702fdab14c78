"""``eval.digits``: a real MNIST classifier reading real Moving MNIST clips and clips whose
digit was swapped."""

from __future__ import annotations

import numpy as np
import pytest

from flowception.eval import digits

SIZE = 32


@pytest.fixture(scope="module")
def classifier():
    net, accuracy = digits.train_classifier(SIZE, steps=400)  # about 0.95 in 20 s
    assert accuracy > 0.8, accuracy
    return net


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """16 real test-split clips, one digit each, as the demo makes them."""
    from flowception.eval.cli import main as cli

    out = tmp_path_factory.mktemp("digits") / "test"
    args = ["data", "make-shards", "moving-mnist", "--out", str(out), "--size", str(SIZE),
            "--split", "test", "--num-videos", "16", "--min-frames", "10", "--max-frames", "16",
            "--digits", "1"]  # fmt: skip
    assert cli(args) == 0
    return str(out), digits.real_clips(str(out), SIZE)


def test_real_clips_keep_their_digit_and_swapped_clips_do_not(classifier, clips):
    _, videos = clips
    real = digits.identity_scores(classifier, videos)
    assert real["videos"] == 16
    assert real["context_kept"] > 0.85 and real["identity_kept"] > 0.85, real
    # every frame after the first from clips of other digits: the context is not kept
    labels = [np.bincount(digits.classes(classifier, v)).argmax() for v in videos]
    swapped = []
    for i, v in enumerate(videos):
        other = next(w for w, lab in zip(videos[i + 1 :] + videos[:i], labels[i + 1 :] + labels[:i])
                     if lab != labels[i])  # fmt: skip
        n = min(len(v), len(other))
        swapped.append(np.concatenate([v[:1], other[1:n]]))
    got = digits.identity_scores(classifier, swapped)
    assert got["context_kept"] < 0.15, got
    assert got["identity_kept"] > 0.85, got  # the other clip's digit is kept from frame 1 on


def test_identity_kept_is_the_share_of_the_most_frequent_digit(classifier, clips):
    _, videos = clips
    # two clips of 12+ frames the classifier reads as one digit in each, not the same digit
    n = 12
    read = [digits.classes(classifier, v) for v in videos]
    clean = [i for i, c in enumerate(read) if (c == c[0]).all() and len(c) >= n]
    a = clean[0]
    b = next(i for i in clean if read[i][0] != read[a][0])
    # clip b's frames, but frames 0, 3, 6, 9 from clip a: the context's digit is a minority
    mixed = videos[b][:n].copy()
    mixed[0::3] = videos[a][0:n:3]
    got = digits.identity_scores(classifier, [mixed])
    assert got["identity_kept"] == pytest.approx(8 / 12), got  # b's digit, not the context's
    assert got["context_kept"] == pytest.approx(3 / 11), got  # frames 3, 6, 9 of 1..11


def test_sample_folders_are_read_from_their_gifs(classifier, clips, tmp_path):
    """What the demo writes (``video_*.gif``) is read back frame for frame."""
    import torch

    from flowception.cluster.videos import write_video

    shards, videos = clips
    folder = tmp_path / "samples" / "image_to_video"
    folder.mkdir(parents=True)
    for i, v in enumerate(videos[:4]):
        x = np.asarray(v, np.float32)[:, None] / 127.5 - 1.0  # [T, 1, H, W] in [-1, 1]
        write_video(torch.from_numpy(x), folder / f"video_{i:02d}", fmt="gif")
    back = digits.read_gifs(folder)
    assert [len(v) for v in back] == [len(v) for v in videos[:4]]
    assert max(np.abs(b.astype(int) - v.astype(int)).max() for b, v in zip(back, videos)) <= 2
    import shutil

    shutil.copytree(folder, tmp_path / "samples" / "interpolation", ignore=lambda d, n: n[2:])
    got = digits.folder_scores(classifier, tmp_path / "samples")
    assert set(got) == {"image_to_video", "interpolation"}  # no unconditional folder: left out
    assert got["image_to_video"]["videos"] == 4 and got["interpolation"]["videos"] == 2
    with pytest.raises(FileNotFoundError, match="no video_"):
        digits.read_gifs(tmp_path)


def test_a_saved_classifier_is_reused_only_for_its_canvas_and_steps(tmp_path):
    import torch

    path = tmp_path / "cnn.pt"
    digits.load_or_train(path, SIZE, steps=2)
    state = torch.load(path, weights_only=True)
    assert (state["size"], state["steps"]) == (SIZE, 2)
    torch.save({**state, "accuracy": 0.123}, path)  # a mark only a load can return
    _, acc = digits.load_or_train(path, SIZE, steps=2)
    assert acc == 0.123
    _, acc = digits.load_or_train(path, SIZE, steps=3)  # other steps: trained afresh
    assert acc != 0.123 and torch.load(path, weights_only=True)["steps"] == 3
    torch.save({**torch.load(path, weights_only=True), "accuracy": 0.123}, path)
    _, acc = digits.load_or_train(path, 28, steps=3)  # another canvas: trained afresh
    assert acc != 0.123 and torch.load(path, weights_only=True)["size"] == 28
    with pytest.raises(ValueError, match="steps=0"):
        digits.train_classifier(SIZE, steps=0)
