"""Does the sampler, not the network, make a briefly trained model's samples fragments?

    python benchmarks/context_probe.py --budget 900 --save-net /tmp/net.pt
    python benchmarks/sampler_probe.py /tmp/net.pt --steps 16 64 256 --time-shift 1 0.5 2

Loads the EMA weights ``context_probe.py --save-net`` wrote and draws, for each sampler
setting, 4 image-to-video videos from the first frames of 4 test clips and 4 unconditional
videos, with the same seed. Writes one grid per setting (rows: the 4 test clips, the 4
image-to-video samples, the 4 unconditional samples) and a JSON with, per setting, the mean
generated length and two pixel statistics of the generated frames against the test clips':
the share of bright pixels (> 0) and the mean pixel value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_recipe as dr  # noqa: E402

from flowception.model.dit import DiT  # noqa: E402
from flowception.model.generate import generate  # noqa: E402


def stats(frames: list[torch.Tensor]) -> dict[str, float]:
    x = torch.cat([f.reshape(-1) for f in frames])
    return {"bright_share": float((x > 0).float().mean()), "mean": float(x.mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", help="file written by context_probe.py --save-net")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--time-shift", type=float, nargs="+", default=[1.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(dr.RESULTS / "sampler_probe"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    saved = torch.load(args.net, weights_only=True)
    recipe = dr.Recipe(**saved["recipe"])
    dr.MIN_FRAMES, dr.MAX_FRAMES = saved["frames"]
    dr.SPEED = saved["speed"]
    dr.GLYPHS = saved.get("glyphs")
    net = DiT(recipe.model_config())
    net.load_state_dict(saved["state_dict"])
    net.eval()
    test = dr.videos(4, "test", recipe.digits, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = {"net": args.net, "steps_trained": saved["steps"], "recipe": saved["recipe"],
               "data": stats([v[1:] for v in test]),
               "data_mean_length": float(np.mean([v.shape[0] for v in test]))}  # fmt: skip
    for shift in args.time_shift:
        for k in args.steps:
            method = dr.method_for(recipe).replace(num_steps=k, time_shift=shift)
            with torch.no_grad():
                i2v = generate(net, method=method, num_videos=4, context=[v[:1] for v in test],
                               generator=torch.Generator().manual_seed(1)).videos  # fmt: skip
                unc = generate(net, method=method, num_videos=4,
                               generator=torch.Generator().manual_seed(2)).videos  # fmt: skip
            name = f"steps{k}-shift{shift:g}"
            dr.write_grid(list(test) + list(i2v) + list(unc), out / f"{name}.png")
            records[name] = {
                "i2v": stats([v[1:] for v in i2v]), "uncond": stats(list(unc)),
                "i2v_mean_length": float(np.mean([v.shape[0] for v in i2v])),
                "uncond_mean_length": float(np.mean([v.shape[0] for v in unc])),
            }  # fmt: skip
            print(name, json.dumps(records[name]), flush=True)
    (out / "sampler_probe.json").write_text(json.dumps(records, indent=2))
    print(f"data {json.dumps(records['data'])}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
