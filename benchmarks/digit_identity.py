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

Writes a JSON and prints a markdown table (one row per folder, then the test clips). The
classifier and the scores are ``flowception.eval.digits``'s, which ``flowception demo``
runs on its own samples (its summary's "digit identity" line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flowception.eval.demo import SIZE  # the demo's canvas
from flowception.eval.digits import folder_scores, identity_scores, load_or_train, real_clips


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
    net, accuracy = load_or_train(args.classifier, SIZE)
    rows = {}
    for folder in args.folders:
        got = folder_scores(net, Path(folder) / "samples")
        rows.update({f"{folder} {task}": r for task, r in got.items()})
    rows[f"{test} (real test clips)"] = identity_scores(net, real_clips(test, SIZE))
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
