"""What PyAV's frame conversion costs with its default threads against one thread.

    python benchmarks/decode_probe.py              # 300 clips of 16 frames, 64x64, gray
    python benchmarks/decode_probe.py --channels 3

Encodes one Moving MNIST clip, then decodes it ``--clips`` times each way, converting
every frame with ``frame.to_ndarray(format=...)`` as PyAV does by default (its
reformatter picks its own swscale threads) and with ``threads=1`` (what
``pipelines.decode.to_array`` does). Prints ms per clip, the process's user and system
CPU, the CPU spent on threads other than the caller's, and whether the pixels match.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowception.pipelines.decode import encode_mp4  # noqa: E402
from flowception.pipelines.sources import moving_mnist  # noqa: E402


def decode(data: bytes, fmt: str, threads: int | None) -> np.ndarray:
    import av

    kw = {} if threads is None else {"threads": threads}
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format=fmt, **kw) for f in container.decode(video=0)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    args = p.parse_args(argv)
    clip = next(iter(moving_mnist(1, size=args.size, min_frames=16, max_frames=16)))
    data = encode_mp4(np.repeat(clip.frames, args.channels, -1), clip.fps)
    fmt = "gray" if args.channels == 1 else "rgb24"
    out = {}
    for name, threads in (("PyAV default", None), ("threads=1", 1)):
        out[name] = decode(data, fmt, threads)  # warm-up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        own0, cpu0 = time.thread_time(), time.process_time()
        for _ in range(args.clips):
            decode(data, fmt, threads)
        wall = time.perf_counter() - t0
        own, cpu = time.thread_time() - own0, time.process_time() - cpu0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"{name:>12}: {wall / args.clips * 1e3:.2f} ms a clip; CPU user "
            f"{r1.ru_utime - r0.ru_utime:.2f} s, system {r1.ru_stime - r0.ru_stime:.2f} s, "
            f"on other threads {cpu - own:.2f} s"
        )
    same = np.array_equal(out["PyAV default"], out["threads=1"])
    print(f"same pixels: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
