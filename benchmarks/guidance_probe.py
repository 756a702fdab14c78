"""Does classifier-free guidance on the context (spec E20) keep a demo video's digit?

    python benchmarks/guidance_probe.py outputs/demo --scales 1 2 3 --out /tmp/guidance
    python benchmarks/digit_identity.py /tmp/guidance/cfg1 /tmp/guidance/cfg2 /tmp/guidance/cfg3 \\
        --test outputs/demo/data/moving_mnist_1digit/test

Samples a ``make demo`` folder's exported EMA model as the demo's stage 5 does (the same
test first frames, seed and 8 + 8 videos, decoded by the run's autoencoder), once per
``method.cfg_scale``, into ``OUT/cfg<scale>/samples/``, where ``digit_identity.py`` reads
them. E20's unconditional branch zeroes the context stream (``velocity_field(...,
drop_context=True)``), the branch ``method.cond_drop_prob`` trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowception.eval import demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a make demo output folder (runs/*/export, data/)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--out", required=True, help="root of the cfg<scale>/ folders")
    args = p.parse_args(argv)
    root = Path(args.folder)
    exports = sorted(root.glob("runs/*/export"))
    tests = sorted(root.glob("data/moving_mnist_*/test"))
    if len(exports) != 1 or len(tests) != 1:
        raise SystemExit(f"{root}: {len(exports)} runs/*/export, {len(tests)} test folders")
    plan = demo.DemoPlan.make(quick=False, steps=None)
    lengths = {}
    for scale in args.scales:
        out = Path(args.out) / f"cfg{scale:g}"
        got = demo.samples(str(exports[0]), {"test": str(tests[0])}, out, plan, "", None,
                           sampler={"cfg_scale": scale})  # fmt: skip
        lengths[f"{scale:g}"] = {k: sum(v) / len(v) for k, v in got.items()}
        print(f"cfg_scale {scale:g}: mean lengths {lengths[f'{scale:g}']} -> {out}")
    (Path(args.out) / "lengths.json").write_text(json.dumps(lengths, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
