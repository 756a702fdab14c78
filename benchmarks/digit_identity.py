"""Do the demo's videos keep their digit? A digit classifier read over sample folders.

    python benchmarks/digit_identity.py outputs/demo --out benchmarks/results/digit_identity.json
    python benchmarks/digit_identity.py outputs/demo /tmp/x/s05 --test /tmp/x/s05/data/test

Trains a small CNN on this project's MNIST digits (``pipelines.sources.mnist_digits``,
the train split's 4000 images) drawn as the demo draws them (14x14 on a 32x32 canvas, at a
random place), checks it on the test split's 1000 (placed the same way), then reads every
frame of each folder's ``samples/image_to_video/video_*.gif`` and
``samples/unconditional/video_*.gif`` (what ``make demo`` writes) and of the test clips:

- ``context_kept``: share of an image-to-video video's frames after the first (the
  context) that the classifier gives the context frame's class (not read for
  unconditional videos, whose first frame is generated);
- ``identity_kept``: share of a video's frames in its most frequent class (1 = the digit
  never changes; a video whose every frame is a different digit scores 1/length);
- the same two on the real test clips (their first frame as the context), which is what
  the classifier scores when the digit does not change: the reference for both.

Writes a JSON and prints a markdown table (one row per folder, then the test clips).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flowception.eval.demo import SIZE  # the demo's canvas
from flowception.pipelines.sources import moving_mnist_digit
from flowception.pipelines.vae_train import shard_videos

DIGIT = moving_mnist_digit(SIZE)  # its digits' side (14 px), as make-shards draws them


def placed(images: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Digits resized to ``DIGIT`` and put at a random place of a blank canvas, in [0, 1]."""
    import cv2

    out = np.zeros((len(images), 1, SIZE, SIZE), np.float32)
    for i, img in enumerate(images):
        y, x = rng.integers(0, SIZE - DIGIT + 1, size=2)
        small = cv2.resize(img, (DIGIT, DIGIT), interpolation=cv2.INTER_AREA)
        out[i, 0, y : y + DIGIT, x : x + DIGIT] = small / 255.0
    return torch.from_numpy(out)


def cnn() -> nn.Module:
    """The untrained digit classifier: three conv blocks, max-pooled, then 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def classifier(seed: int = 0, steps: int = 1500) -> tuple[nn.Module, float]:
    """The trained CNN and its accuracy on the test split's digits (placed at random)."""
    from flowception.pipelines.sources import mnist_digits, split_digits

    images, labels = mnist_digits()
    train, test = split_digits("train"), split_digits("test")
    torch.manual_seed(seed)
    net = cnn()
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        pick = train[rng.integers(0, len(train), 128)]
        x, y = placed(images[pick], rng), torch.as_tensor(labels[pick]).long()
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(placed(images[test], rng)).argmax(1).numpy()
    return net, float((pred == labels[test]).mean())


def classes(net: nn.Module, video: np.ndarray) -> np.ndarray:
    """Class of each frame of ``video`` (uint8 ``[T, H, W]``)."""
    with torch.no_grad():
        x = torch.from_numpy(video.astype(np.float32) / 255.0)[:, None]
        return net(x).argmax(1).numpy()


def scores(net: nn.Module, videos: list[np.ndarray]) -> dict[str, float]:
    context, identity = [], []
    for v in videos:
        c = classes(net, v)
        context.append(float((c[1:] == c[0]).mean()))
        identity.append(float(np.bincount(c).max() / len(c)))
    return {"context_kept": float(np.mean(context)), "identity_kept": float(np.mean(identity)),
            "videos": len(videos)}  # fmt: skip


def gifs(folder: Path) -> list[np.ndarray]:
    """Frames of every ``video_*.gif`` in ``folder``, grey ``[T, H, W]`` uint8."""
    from PIL import Image, ImageSequence

    out = []
    for path in sorted(folder.glob("video_*.gif")):
        with Image.open(path) as im:
            out.append(np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]))
    if not out:
        raise FileNotFoundError(f"{folder}: no video_*.gif")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="demo output folders (holding samples/)")
    p.add_argument(
        "--test",
        default=None,
        help="test shards (default: the first folder's data/moving_mnist_*/test)",
    )
    p.add_argument("--out", default=None, help="JSON file")
    p.add_argument(
        "--classifier",
        default=None,
        help="state file: loaded when it exists, else written after training",
    )
    args = p.parse_args(argv)
    found = sorted((Path(args.folders[0]) / "data").glob("moving_mnist_*/test/index.json"))
    if not args.test and len(found) != 1:
        raise SystemExit(
            f"{args.folders[0]}/data: {len(found)} moving_mnist_*/test/index.json; pass --test"
        )
    test = args.test or str(found[0].parent)
    t0 = time.perf_counter()
    saved = Path(args.classifier) if args.classifier else None
    if saved and saved.exists():
        state = torch.load(saved, weights_only=True)
        net = cnn()
        net.load_state_dict(state["state_dict"])
        net.eval()
        accuracy = float(state["accuracy"])
    else:
        net, accuracy = classifier()
        if saved:
            torch.save({"state_dict": net.state_dict(), "accuracy": accuracy}, saved)
    rows = {}
    for folder in args.folders:
        for task in ("image_to_video", "unconditional"):
            rows[f"{folder} {task}"] = scores(net, gifs(Path(folder) / "samples" / task))
    clips, _ = shard_videos(test, size=SIZE, channels=1)  # uint8 [T, H, W, 1] each
    rows[f"{test} (real test clips)"] = scores(net, [v[..., 0] for v in clips])
    record = {"classifier_test_accuracy": accuracy, "seconds": time.perf_counter() - t0,
              "rows": rows, "command": " ".join(sys.argv)}  # fmt: skip
    print(f"classifier accuracy on placed test digits: {accuracy:.3f}\n")
    print("| videos | n | context kept | identity kept |\n|---|---|---|---|")
    for name, r in rows.items():
        context = "-" if name.endswith("unconditional") else f"{r['context_kept']:.2f}"
        print(f"| {name} | {r['videos']} | {context} | {r['identity_kept']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
