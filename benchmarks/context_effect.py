"""How much does a demo model's estimate of a frame depend on the context frame's content?

    python benchmarks/context_effect.py outputs/demo --out benchmarks/results/context_effect.json

Loads a ``make demo`` folder's exported EMA model and its autoencoder, encodes every test
clip, and for frame ``j`` of each clip builds the two-frame video ``[context, frame j]``
(context: the clip's clean frame 0, ``t = 1``; frame ``j`` noised to ``t``), as the sampler
sees a frame inserted next to the context. It reads the network's one-step estimate of the
clean frame, ``x1_hat = x_t + (1 - t) v`` (spec E1-E2), and its mean squared error against
the true latent, once with the clip's own context and once with the next clip's frame 0
(same noise). ``own`` < ``swapped`` by a wide margin means the estimate reads the context's
digit; equal means it does not. ``copy`` is the error of the context itself as the estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from length_probe import clips, latent_run, save  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a make demo output folder (runs/*/export, data/)")
    p.add_argument("--frames", type=int, nargs="+", default=[1, 3, 6], help="j")
    p.add_argument("--times", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9], help="t")
    p.add_argument("--out", help="JSON file")
    args = p.parse_args(argv)
    net, _, vae, data = latent_run(args.folder)
    z = [torch.from_numpy(vae.encode(c)).float() for c in clips(str(data / "test"))]
    g = torch.Generator().manual_seed(0)
    rows: dict[str, dict] = {}
    n = len(z)
    for j in args.frames:
        for t in args.times:
            err = {"own": [], "swapped": [], "copy": []}
            for i in range(n):
                if len(z[i]) <= j:
                    continue
                x1 = z[i][j]
                x_t = t * x1 + (1 - t) * torch.randn(x1.shape, generator=g)  # E1
                for name, ctx in (("own", z[i][0]), ("swapped", z[(i + 1) % n][0])):
                    x = torch.stack([ctx, x_t])
                    with torch.no_grad():
                        out = net(x, torch.tensor([1.0, t]), torch.tensor([0, 2], dtype=torch.int32),
                                  is_context=torch.tensor([True, False]))  # fmt: skip
                    x1_hat = x_t + (1 - t) * out.velocity[1].float()
                    err[name].append(float(((x1_hat - x1) ** 2).mean()))
                err["copy"].append(float(((z[i][0] - x1) ** 2).mean()))
            key = f"j={j}/t={t:g}"
            rows[key] = {k: round(float(np.mean(v)), 4) for k, v in err.items()}
            rows[key]["clips"] = len(err["own"])
            print(key, json.dumps(rows[key]), flush=True)
    save(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
