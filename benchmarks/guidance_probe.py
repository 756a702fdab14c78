"""Does classifier-free guidance on the context (spec E20) keep a demo video's digit?

    python benchmarks/guidance_probe.py outputs/demo --scales 1 2 3 --out /tmp/guidance
    python benchmarks/guidance_probe.py outputs/demo --scales 1 --num-steps 16 64 --out /tmp/k
    python benchmarks/guidance_probe.py /tmp/interp --scales 1 --tasks interpolation --out /tmp/i
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
import dataclasses
import json
import sys
from pathlib import Path

from flowception.eval import demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a make demo output folder (runs/*/export, data/)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--out", required=True, help="root of the cfg<scale>/ folders")
    p.add_argument("--num-steps", type=int, nargs="+", default=[None],
                   help="sampler steps K (default: the run's method.num_steps); folders "
                        "cfg<scale>_k<K>/ when given")  # fmt: skip
    p.add_argument("--videos", type=int, default=None,
                   help="videos a task (default: the demo's 8; at most the test clips)")  # fmt: skip
    p.add_argument("--contexts", choices=["test", "train"], default="test",
                   help="whose first frames start the image-to-video videos")  # fmt: skip
    p.add_argument("--tasks", nargs="+", default=["image_to_video", "unconditional"],
                   choices=["image_to_video", "interpolation", "unconditional"],
                   help="interpolation: each test clip's first and last frames as keyframes")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="further method fields for the sampler, e.g. n_start_context=0")  # fmt: skip
    args = p.parse_args(argv)
    extra = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            p.error(f"--set {item!r}: want FIELD=VALUE")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value  # a bare string, e.g. insertion=poisson
    try:
        export, data = demo.locate(args.folder)
    except FileNotFoundError as e:
        p.error(str(e))
    plan = demo.DemoPlan.make(quick=False, steps=None)
    if args.videos:
        plan = dataclasses.replace(plan, sample_videos=args.videos)
    lengths = {}
    for scale in args.scales:
        for k in args.num_steps:
            name = f"cfg{scale:g}" + (f"_k{k}" if k else "")
            sampler = {"cfg_scale": scale, **({"num_steps": k} if k else {}), **extra}
            got = demo.samples(str(export), {"test": str(data / args.contexts)}, Path(args.out) / name,
                               plan, "", None, sampler=sampler, tasks=tuple(args.tasks))  # fmt: skip
            lengths[name] = {task: sum(v) / len(v) for task, v in got.items()}
            print(f"{name}: mean lengths {lengths[name]} -> {Path(args.out) / name}")
    (Path(args.out) / "lengths.json").write_text(json.dumps(lengths, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
