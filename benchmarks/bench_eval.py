"""Evaluation benchmark: throughput of I3D feature extraction at the FVD protocol size.

    python benchmarks/bench_eval.py            # writes benchmarks/results/eval.json
    python benchmarks/bench_eval.py --quick    # one timed repeat
    python benchmarks/bench_eval.py --weights s3://bucket/eval/i3d_kinetics400.safetensors

(a) FVD features: batches of 16-frame uint8 clips -> (B, 400) logits, with the frames
    already 224x224 and with 256x256 frames resized inside the extractor;
(b) subject consistency: per-frame I3D features (each frame its own clip, Mixed_5c);
(c) the Farneback metrics (motion smoothness + dynamic degree) per 16-frame video.
The weights are converted into ``assets/`` first when missing. The generation part of
the eval benchmark (clips/s of the sampler) is added with the eval job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flowception.eval.assets import DEFAULT_I3D_PATH, convert_i3d, uri_exists
from flowception.eval.i3d import I3DFeatureExtractor
from flowception.eval.metrics import dynamic_degree, motion_smoothness

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_I3D_PATH)
    parser.add_argument("--batch", type=int, default=4, help="clips per forward pass")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "eval.json"))
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3

    # [1] weights (converted once into assets/ when missing)
    if not uri_exists(args.weights):
        convert_i3d(out=args.weights)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = I3DFeatureExtractor(args.weights, device=device, batch_size=args.batch)

    # [2] timings
    rng = np.random.default_rng(0)
    b = args.batch
    clips_224 = rng.integers(0, 256, (b, 16, 224, 224, 3), dtype=np.uint8)
    clips_256 = rng.integers(0, 256, (b, 16, 256, 256, 3), dtype=np.uint8)
    rows = []
    for name, clips, fn in [
        ("fvd_features_224", clips_224, extractor.features),
        ("fvd_features_256_resized", clips_256, extractor.features),
        ("frame_features_mixed_5c", clips_224, extractor.frame_features),
    ]:
        seconds = timed(lambda fn=fn, clips=clips: fn(clips), repeats)
        rows.append({"what": name, "clips": b, "seconds": seconds, "clips_per_s": b / seconds})
    video = clips_224[0]
    seconds = timed(lambda: (motion_smoothness(video), dynamic_degree(video)), repeats)
    rows.append(
        {
            "what": "farneback_metrics_224",
            "clips": 1,
            "seconds": seconds,
            "clips_per_s": 1 / seconds,
        }
    )

    # [3] report
    result = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],  # other jobs on the machine skew the figures
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "frames_per_clip": 16,
        "resolution": 224,
        "batch": b,
        "repeats": repeats,
        "detector_sha256": extractor.sha256,
        "feature_extraction": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'what':<28}{'clips':>6}{'seconds':>10}{'clips/s':>10}   ({device}, {torch.get_num_threads()} threads)"
    )
    for r in rows:
        print(f"{r['what']:<28}{r['clips']:>6}{r['seconds']:>10.3f}{r['clips_per_s']:>10.2f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
