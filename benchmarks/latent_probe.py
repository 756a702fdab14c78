"""Does the demo-size DiT learn digits sooner on the latents of a small trained autoencoder?

    python benchmarks/latent_probe.py --ae-budget 180 --budget 720

The pixel probes (``context_probe.py``, ``benchmarks/results/demo_recipe.md``) show a
pixel-space DiT drawing fragments after the steps 2 cores give. Here, single-process on
the same clips (the demo's Moving MNIST, one digit, 32x32):

1. a real diffusers ``AutoencoderKL`` (convolutions, spatial compression 4: 32x32x1 ->
   8x8x4) trained for ``--ae-budget`` seconds on the training clips' frames (MSE plus a
   small KL term), its latents normalised to unit standard deviation (``scaling_factor``);
2. the DiT of ``demo_recipe`` (``--size``, ``--patch`` on the 8x8 latent grid) trained on
   the encoded clips for ``--budget`` seconds by ``demo_recipe.fit``;
3. image-to-video from the latent of 4 test clips' first frames and 4 unconditional
   videos, decoded by the autoencoder.

Writes ``benchmarks/results/latent_probe.json`` and a grid (rows: the 4 test clips, their
autoencoder reconstructions, the 4 image-to-video samples, the 4 unconditional samples).
``--save-vae DIR`` also writes the autoencoder with ``save_pretrained`` (a directory
``flowception data encode --vae`` reads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_recipe as dr  # noqa: E402
from sampler_probe import stats  # noqa: E402

from flowception.model.config import model_config  # noqa: E402
from flowception.model.generate import generate  # noqa: E402


def autoencoder(seed: int):
    """32x32x1 -> 8x8x4: three encoder blocks (two of them downsample by 2)."""
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(32, 64, 64),
        norm_num_groups=8, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=32,
    )  # fmt: skip


def train_autoencoder(pool: list[torch.Tensor], budget_s: float, seed: int, kl: float):
    """AdamW on random batches of 64 frames until ``budget_s`` seconds; returns the
    autoencoder (eval mode) and its steps."""
    vae = autoencoder(seed)
    frames = torch.cat(pool)  # (N, 1, 32, 32)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        x = frames[torch.randint(len(frames), (64,), generator=gen)]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + kl * post.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return vae.eval(), steps


@torch.no_grad()
def encode(vae, clip: torch.Tensor) -> torch.Tensor:
    """``[T, 1, 32, 32]`` -> normalised latents ``[T, 4, 8, 8]`` (posterior mode)."""
    return vae.encode(clip).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ae-budget", type=float, default=180.0, help="autoencoder seconds")
    p.add_argument("--budget", type=float, default=720.0, help="DiT training seconds")
    p.add_argument("--kl", type=float, default=1e-3, help="KL weight (per pixel)")
    p.add_argument("--size", default="s-128", help="model size (model.config.MODEL_SIZES)")
    p.add_argument("--patch", type=int, default=2, help="patch size on the 8x8 latent grid")
    p.add_argument("--frame-budget", type=int, default=128, help="frames per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine)")
    p.add_argument("--glyphs", type=int, default=None, help="as context_probe.py --glyphs")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--save-vae", default=None, help="save_pretrained the autoencoder here")
    p.add_argument("--out", default=str(dr.RESULTS / "latent_probe.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dr.GLYPHS = args.glyphs
    train = dr.videos(400, "train", 1, 0)
    test = dr.videos(4, "test", 1, 1)

    vae, ae_steps = train_autoencoder(train, args.ae_budget, 0, args.kl)
    with torch.no_grad():
        std = float(torch.cat([vae.encode(c).latent_dist.mode() for c in train[:100]]).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    recon = [decode(vae, encode(vae, v)) for v in test]
    recon_mse = float(np.mean([((r - v) ** 2).mean().item() for r, v in zip(recon, test)]))
    blank = float(np.mean([((v + 1) ** 2).mean().item() for v in test]))
    if args.save_vae:
        vae.save_pretrained(args.save_vae)
    print(f"autoencoder: {ae_steps} steps, reconstruction mse {recon_mse:.4f} "
          f"(blank {blank:.4f}), latent std {std:.3f}", flush=True)  # fmt: skip

    pool = [encode(vae, v) for v in train]
    name = f"latent-{args.size}-p{args.patch}-f{args.frame_budget}"
    name += f"-glyphs{args.glyphs}" if args.glyphs else ""
    recipe = dr.Recipe(name, size=args.size, patch=args.patch, digits=1,
                       frame_budget=args.frame_budget, lr=args.lr)  # fmt: skip
    cfg = model_config(args.size, frame_size=(8, 8), patch_size=args.patch, in_channels=4)
    run = dr.fit(recipe, args.budget, 0, 400, pool=pool, cfg=cfg)
    method = dr.method_for(recipe)
    with torch.no_grad():
        i2v = generate(run.net, method=method, num_videos=4,
                       context=[encode(vae, v[:1]) for v in test],
                       generator=torch.Generator().manual_seed(1)).videos  # fmt: skip
        unc = generate(run.net, method=method, num_videos=4,
                       generator=torch.Generator().manual_seed(2)).videos  # fmt: skip
    i2v, unc = [decode(vae, z) for z in i2v], [decode(vae, z) for z in unc]
    out = Path(args.out)
    grid = dr.write_grid(list(test) + recon + i2v + unc, out.with_suffix(".png"))
    record = {
        "recipe": recipe.__dict__, "ae_budget_s": args.ae_budget, "ae_steps": ae_steps,
        "kl": args.kl, "recon_mse": recon_mse, "blank_mse": blank, "latent_std": std,
        "budget_s": args.budget, "steps": run.steps,
        "train_velocity_loss_last100": float(np.mean([v for v, _ in run.losses[-100:]])),
        "data": stats([v[1:] for v in test]), "i2v": stats([v[1:] for v in i2v]),
        "uncond": stats(unc),
        "i2v_mean_length": float(np.mean([v.shape[0] for v in i2v])),
        "uncond_mean_length": float(np.mean([v.shape[0] for v in unc])),
        "data_mean_length": float(np.mean([v.shape[0] for v in test])),
        "load_avg": os.getloadavg(), "grid": grid.name,
    }  # fmt: skip
    out.write_text(json.dumps(record, indent=2))
    print(f"DiT: {run.steps} steps; bright share i2v {record['i2v']['bright_share']:.4f}, "
          f"uncond {record['uncond']['bright_share']:.4f}, data "
          f"{record['data']['bright_share']:.4f}; wrote {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
