"""How much does the demo's latent of a digit change when the digit moves a pixel?

    python benchmarks/latent_shift_probe.py outputs/demo/data/moving_mnist_1digit

The demo's DiT works on the latents of a small autoencoder (``data train-vae``: 32x32x1
frames -> 8x8x4, stride 4). Its digits move 1.125 px a frame. For the first frame of each
test clip whose digit has 8 px of room on both sides, the frame shifted right by ``k``
pixels is encoded and compared with

- the unshifted frame's latent (``moved``: how different the latent of the moved digit is),
- that latent rolled by ``k / 4`` latent pixels when ``k`` is a multiple of the stride
  (``rolled``: how far the encoder is from moving the latent with the digit),

each as a norm relative to the unshifted latent's. Prints a markdown table; ``--out``
writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a demo data folder (holding vae/ and test/)")
    p.add_argument("--shifts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)

    from flowception.eval.demo import SIZE
    from flowception.eval.digits import real_clips
    from flowception.pipelines.latents import VaeCodec

    data = Path(args.data)
    vae = VaeCodec("image", str(data / "vae"), "cpu")
    margin = max(args.shifts)
    rows: dict[int, list[tuple[float, float]]] = {k: [] for k in args.shifts}
    used = 0
    for clip in real_clips(str(data / "test"), SIZE):
        frame = clip[0]  # uint8 [H, W]
        cols = np.nonzero((frame > 20).any(axis=0))[0]
        if cols.min() < margin or cols.max() >= SIZE - margin:
            continue  # too near a wall: a shift would wrap the digit round
        used += 1
        z0 = vae.encode(frame[None, :, :, None])[0]  # (C, h, w)
        stride = SIZE // z0.shape[-1]  # the autoencoder's spatial compression (4: 32 -> 8)
        norm = float(np.linalg.norm(z0))
        for k in args.shifts:
            zk = vae.encode(np.roll(frame, k, axis=1)[None, :, :, None])[0]
            rolled = np.roll(z0, k // stride, axis=2) if k % stride == 0 else None
            rows[k].append((
                float(np.linalg.norm(zk - z0)) / norm,
                float("nan") if rolled is None else float(np.linalg.norm(zk - rolled)) / norm,
            ))  # fmt: skip
    if not used:
        raise SystemExit(f"{data / 'test'}: no first frame with {margin} px of room on both sides")
    table = {k: {"moved": float(np.mean([r[0] for r in v])),
                 "rolled": float(np.mean([r[1] for r in v]))} for k, v in rows.items()}  # fmt: skip
    print(f"{used} test clips' first frames\n")
    print("| shift (px) | moved: latent change | rolled: off a moved latent |\n|---|---|---|")
    for k, r in table.items():
        rolled = "-" if np.isnan(r["rolled"]) else f"{r['rolled']:.3f} ({k // stride} latent px)"
        print(f"| {k} | {r['moved']:.3f} | {rolled} |")
    if args.out:
        record = {"clips": used, "stride": stride, "shifts": table, "command": " ".join(sys.argv)}
        Path(args.out).write_text(json.dumps(record, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
