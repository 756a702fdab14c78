"""Do Moving MNIST videos keep their digit? A small MNIST classifier read frame by frame.

The demo's videos hold one MNIST digit each (``pipelines.sources.moving_mnist``). A CNN
trained on this project's MNIST training digits, drawn as make-shards draws them (a
``moving_mnist_digit(size)`` px digit at a random place of a blank ``size`` px canvas),
gives every frame a class; from those classes:

- ``context_kept``: share of an image-to-video video's frames after the first (the
  context) that get the first frame's class (meaningless for unconditional videos, whose
  first frame is generated);
- ``identity_kept``: share of a video's frames in its most frequent class (1 = the digit
  never changes; a video whose every frame is another digit scores ``1 / length``).

Read on real test clips (their first frame as the context) the same two numbers are what
the classifier scores when the digit never changes: the reference every generated figure is
read against (``real/digits/...``). ``benchmarks/digit_identity.py`` is the command-line
reader of sample folders; ``flowception demo`` runs it as part of its evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSIFIER_STEPS = 1500
"""Training steps of the classifier (batch 128, cosine from 2e-3): 0.969 on placed test
digits, 72 s on 2 idle cores (600 steps: 0.955, 41 s; demo_recipe.md, fourth session)."""


def placed(images: np.ndarray, rng: np.random.Generator, size: int) -> torch.Tensor:
    """Digits resized as make-shards sizes them and put at a random place of a blank
    ``size x size`` canvas: ``float32 [N, 1, size, size]`` in [0, 1]."""
    import cv2

    from flowception.pipelines.sources import moving_mnist_digit

    side = moving_mnist_digit(size)
    out = np.zeros((len(images), 1, size, size), np.float32)
    for i, img in enumerate(images):
        y, x = rng.integers(0, size - side + 1, size=2)
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        out[i, 0, y : y + side, x : x + side] = small / 255.0
    return torch.from_numpy(out)


def cnn() -> nn.Module:
    """The untrained classifier: three conv blocks, max-pooled, then 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def train_classifier(
    size: int, *, steps: int = CLASSIFIER_STEPS, seed: int = 0
) -> tuple[nn.Module, float]:
    """The trained CNN (eval mode) and its accuracy on the 1000 test-split digits, placed
    at random on the ``size`` px canvas."""
    from flowception.pipelines.sources import mnist_digits, split_digits

    if steps < 1:
        raise ValueError(f"digit classifier steps={steps}: want at least 1")
    images, labels = mnist_digits()
    train, test = split_digits("train"), split_digits("test")
    torch.manual_seed(seed)
    net = cnn()
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        pick = train[rng.integers(0, len(train), 128)]
        x, y = placed(images[pick], rng, size), torch.as_tensor(labels[pick]).long()
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(placed(images[test], rng, size)).argmax(1).numpy()
    return net, float((pred == labels[test]).mean())


def load_or_train(
    path: str | Path | None, size: int, *, steps: int = CLASSIFIER_STEPS
) -> tuple[nn.Module, float]:
    """The classifier saved at ``path`` for this canvas and step count, else a new one
    (then saved there). Returns ``(net, test accuracy)``."""
    saved = Path(path) if path else None
    if saved and saved.exists():
        state = torch.load(saved, weights_only=True)
        if state.get("size", size) == size and state.get("steps", steps) == steps:
            net = cnn()
            net.load_state_dict(state["state_dict"])
            net.eval()
            return net, float(state["accuracy"])
    net, accuracy = train_classifier(size, steps=steps)
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "accuracy": accuracy, "size": size,
                    "steps": steps}, saved)  # fmt: skip
    return net, accuracy


def classes(net: nn.Module, video: np.ndarray) -> np.ndarray:
    """Class of each frame of a grey ``uint8 [T, H, W]`` video."""
    with torch.no_grad():
        x = torch.from_numpy(video.astype(np.float32) / 255.0)[:, None]
        return net(x).argmax(1).numpy()


def identity_scores(net: nn.Module, videos: list[np.ndarray]) -> dict[str, float]:
    """``context_kept`` and ``identity_kept`` averaged over ``videos`` (grey ``uint8
    [T, H, W]`` each, at least 2 frames), and their count."""
    if not videos:
        raise ValueError("identity_scores: no videos")
    context, identity = [], []
    for i, v in enumerate(videos):
        if v.ndim != 3 or len(v) < 2:
            raise ValueError(f"video {i}: shape {tuple(v.shape)}, want [T >= 2, H, W]")
        c = classes(net, v)
        context.append(float((c[1:] == c[0]).mean()))
        identity.append(float(np.bincount(c).max() / len(c)))
    return {"context_kept": float(np.mean(context)), "identity_kept": float(np.mean(identity)),
            "videos": len(videos)}  # fmt: skip


def read_gifs(folder: str | Path) -> list[np.ndarray]:
    """Frames of every ``video_*.gif`` in ``folder`` (what the demo's samples stage
    writes), grey ``uint8 [T, H, W]`` each."""
    from PIL import Image, ImageSequence

    out = []
    for path in sorted(Path(folder).glob("video_*.gif")):
        with Image.open(path) as im:
            out.append(np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]))
    if not out:
        raise FileNotFoundError(f"{folder}: no video_*.gif")
    return out


def real_clips(shards: str, size: int) -> list[np.ndarray]:
    """The clips of pixel Moving MNIST shards, grey ``uint8 [T, H, W]`` each."""
    from flowception.pipelines.vae_train import shard_videos

    clips, _ = shard_videos(shards, size=size, channels=1)  # uint8 [T, H, W, 1] each
    return [v[..., 0] for v in clips]


def folder_scores(net: nn.Module, samples: str | Path) -> dict[str, dict[str, float]]:
    """Scores of the ``samples/{image_to_video,interpolation,unconditional}`` gifs, by task
    (a task without a folder is left out). The real clips' reference is
    ``identity_scores(net, real_clips(...))``, read once however many folders are scored."""
    return {
        task: identity_scores(net, read_gifs(Path(samples) / task))
        for task in ("image_to_video", "interpolation", "unconditional")
        if (Path(samples) / task).is_dir()
    }
