"""How much does the demo's latent of a digit change when the digit moves a pixel?

    python benchmarks/latent_shift_probe.py outputs/demo/data/moving_mnist_1digit

The demo's DiT works on the latents of a small autoencoder (``data train-vae``: 32x32x1
frames -> 8x8x4, stride 4). Its digits move 1.125 px a frame. For the first frame of each
test clip whose digit has 8 px of room on both sides, the frame shifted right by ``k``
pixels is encoded and compared with

- the unshifted frame's latent (``moved``: how different the latent of the moved digit is),
- that latent moved by ``k / stride`` latent pixels, bilinearly for a fraction
  (``interpolated``: how far the encoder is from moving the latent with the digit; what
  ``data train-vae --shift-weight`` trains down),

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
    from flowception.pipelines.vae_train import latent_move_error

    data = Path(args.data)
    vae = VaeCodec("image", str(data / "vae"), "cpu")
    margin = max(args.shifts)
    frames = []
    for clip in real_clips(str(data / "test"), SIZE):
        cols = np.nonzero((clip[0] > 20).any(axis=0))[0]
        if margin <= cols.min() and cols.max() < SIZE - margin:  # room to move on both sides
            frames.append(clip[0])  # uint8 [H, W]
    used = len(frames)
    if not used:
        raise SystemExit(f"{data / 'test'}: no first frame with {margin} px of room on both sides")
    stride = vae.info.spatial_compression
    table = {}
    for k in args.shifts:
        change, off = latent_move_error(vae, np.stack(frames)[..., None], k)
        table[k] = {"moved": change, "interpolated": off}
    print(f"{used} test clips' first frames\n")
    print(f"stride {stride}\n\n| shift (px) | moved: latent change | interpolated: off the "
          "latent moved k/stride latent px |\n|---|---|---|")  # fmt: skip
    for k, r in table.items():
        print(f"| {k} | {r['moved']:.3f} | {r['interpolated']:.3f} ({k / stride:g} latent px) |")
    if args.out:
        record = {"clips": used, "stride": stride, "shifts": table, "command": " ".join(sys.argv)}
        Path(args.out).write_text(json.dumps(record, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
