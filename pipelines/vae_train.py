"""Train a small image VAE (a diffusers ``AutoencoderKL``) on the frames of pixel shards.

CPU recipes and the demo have no pretrained VAE that fits their frames (nothing is
downloaded, and a Stable Diffusion VAE is 3-channel and too slow here). This trains one
in minutes, saves it with ``save_pretrained`` and records how well it reconstructs, so
``flowception data encode --vae DIR`` and ``data.vae_dir`` use it like any other::

    flowception data train-vae --shards data/moving_mnist/train --out data/vae/mm --steps 1500

What it trains: MSE reconstruction plus ``kl_weight`` times the posterior's KL divergence
per pixel (a nearly deterministic autoencoder, as latent diffusion's VAEs are), plus
``shift_weight`` times ``shift_loss`` when it is set (off by default), AdamW on
random batches of frames, every ``holdout_every``-th video held out. The saved
``scaling_factor`` is ``1 / std`` of the training frames' latents, so the normalised
latents the DiT trains on have unit standard deviation (the convention of
``pipelines.latents``). ``train_vae.json`` in the directory records the recipe, the steps
and the held-out reconstruction error against a blank (background-only) frame.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

RECORD_NAME = "train_vae.json"


@dataclass(frozen=True)
class VaeRecipe:
    """How ``train_image_vae`` builds and trains the autoencoder.

    ``block_out_channels`` has one entry per encoder block; every block but the last halves
    the frame side, so ``(16, 32, 32)`` maps 32x32 frames to 8x8 latents.

    ``shift_weight`` > 0 adds ``shift_weight * shift_loss`` (see ``shift_loss``): the latent
    of a frame moved by less than the stride is pulled towards the frame's latent moved by
    the same fraction of a latent pixel, so a digit that moves a pixel moves its latent
    instead of re-encoding its shape.
    """

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    kl_weight: float = 1e-3
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    attention: bool = False
    shift_weight: float = 0.0
    seed: int = 0
    holdout_every: int = 16

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "latent_channels", "holdout_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VaeRecipe.{name}={value!r}: expected an integer >= 1")
        if not self.lr > 0:
            raise ValueError(f"VaeRecipe.lr={self.lr!r}: expected > 0")
        for name in ("kl_weight", "shift_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"VaeRecipe.{name}={getattr(self, name)!r}: expected >= 0")
        chans = self.block_out_channels
        if not chans or any(c < 1 or c % 4 for c in chans):
            raise ValueError(
                f"VaeRecipe.block_out_channels={chans!r}: expected multiples of 4 (group norm)"
            )

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def shard_videos(
    shards: str, *, size: int, channels: int, s3_endpoint: str | None = None
) -> tuple[list[np.ndarray], Counter]:
    """Every decodable video of ``shards`` from its first frame (``uint8 [T, H, W, C]``),
    and the count of rows by status (``ok`` and each skip reason)."""
    from flowception.pipelines.config import DataConfig
    from flowception.pipelines.dataset import decode_rows, read_shard_rows, shard_list

    cfg = DataConfig(shards=shards, size=size, channels=channels, num_frames=1024,
                     min_frames=1, frame_budget=1024, clip_start="first", shuffle=False,
                     s3_endpoint_url=s3_endpoint)  # fmt: skip
    videos: list[np.ndarray] = []
    counts: Counter = Counter()
    for i, shard in enumerate(shard_list(cfg)):
        rows = decode_rows(read_shard_rows(cfg, shard.url, 0, i, info=shard), cfg)
        counts.update(str(s) for s in rows["status"])
        videos += [np.asarray(v) for v, s in zip(rows["video"], rows["status"]) if s == "ok"]
    return videos, counts


def build_autoencoder(recipe: VaeRecipe, channels: int, size: int):
    """The untrained ``AutoencoderKL`` of ``recipe`` (seeded)."""
    import diffusers

    if size % recipe.spatial_compression:
        raise ValueError(
            f"frames of {size}x{size}: not divisible by the VAE's spatial compression "
            f"{recipe.spatial_compression} (block_out_channels={recipe.block_out_channels})"
        )
    torch.manual_seed(recipe.seed)
    n = len(recipe.block_out_channels)
    return diffusers.AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=recipe.latent_channels,
        block_out_channels=recipe.block_out_channels, norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=size, mid_block_add_attention=recipe.attention,
    )  # fmt: skip


def _move(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` moved down ``dy`` and right ``dx`` pixels (fractions
    bilinearly), the border value repeated into the uncovered edge."""
    n, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype) - dy  # where each output pixel reads from
    xs = torch.arange(w, dtype=x.dtype) - dx
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)  # (H, W, [x, y])
    grid = (2 * grid + 1) / torch.tensor([w, h], dtype=x.dtype) - 1  # align_corners=False
    return torch.nn.functional.grid_sample(
        x, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False
    )


def shift_loss(vae, x: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """How far the encoder is from commuting with moves smaller than its stride ``s``.

    ``x`` (frames ``[N, C, H, W]``) is moved by a whole number of pixels ``(dy, dx)``, each
    drawn from ``[-(s-1), s-1]`` per frame; its latent mean is compared with ``z`` (the
    latent mean of ``x``) moved by ``(dy/s, dx/s)`` latent pixels (bilinear), as a mean
    square relative to ``z``'s. The target is not detached: both latents move towards a
    code in which position is interpolable.
    """
    s = x.shape[-1] // z.shape[-1]
    if s < 2:
        return z.new_zeros(())
    moves = torch.randint(-(s - 1), s, (len(x), 2), generator=gen)
    moved = torch.cat([_move(x[i : i + 1], float(dy), float(dx)) for i, (dy, dx) in
                       enumerate(moves.tolist())])  # fmt: skip
    target = torch.cat([_move(z[i : i + 1], dy / s, dx / s) for i, (dy, dx) in
                        enumerate(moves.tolist())])  # fmt: skip
    got = vae.encode(moved).latent_dist.mean
    return ((got - target) ** 2).mean() / (z.detach() ** 2).mean().clamp_min(1e-8)


def latent_move_error(codec, frames: np.ndarray, k: int) -> tuple[float, float]:
    """How ``codec`` (a ``pipelines.latents.VaeCodec`` of the image kind) encodes a move.

    Each frame of ``frames`` (``uint8 [N, H, W, C]``, the content away from the borders) is
    moved right ``k`` pixels; returns the mean over frames of ``|z_k - z| / |z|`` (how much the
    latent changes) and ``|z_k - move(z, k / s)| / |z|`` (how far it is from the latent moved
    by the same distance, bilinearly, ``s`` the stride: what ``shift_weight`` trains down).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    moved = _move(x, 0.0, float(k)).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    z = torch.from_numpy(codec.encode(frames))  # (N, c, h, w)
    zk = torch.from_numpy(codec.encode(moved.numpy()))
    s = frames.shape[2] // z.shape[-1]
    norm = z.flatten(1).norm(dim=1)
    change = ((zk - z).flatten(1).norm(dim=1) / norm).mean()
    off = ((zk - _move(z, 0.0, k / s)).flatten(1).norm(dim=1) / norm).mean()
    return float(change), float(off)


def _frames(videos: list[np.ndarray]) -> torch.Tensor:
    """``uint8 [T, H, W, C]`` clips -> ``float32 [N, C, H, W]`` frames in ``[-1, 1]``."""
    x = torch.from_numpy(np.concatenate(videos)).permute(0, 3, 1, 2)  # (N, C, H, W)
    return x.float() / 127.5 - 1.0


def train_image_vae(
    videos: list[np.ndarray],
    out: str,
    recipe: VaeRecipe = VaeRecipe(),
    *,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Train ``recipe``'s autoencoder on the frames of ``videos`` and save it to ``out``.

    Args:
        videos: ``uint8 [T, H, W, C]`` clips of one size; every ``holdout_every``-th (the
            last one when there are fewer) is held out (never trained on) for the
            reconstruction figure.
        out: local directory (``save_pretrained`` layout plus ``train_vae.json``).
        recipe: architecture and optimiser.
        progress: called with ``(step, loss)`` after every step.

    Returns:
        The record written to ``train_vae.json``.
    """
    if len(videos) < 2:
        raise ValueError(f"train-vae: {len(videos)} usable video(s); need at least 2")
    every = min(recipe.holdout_every, len(videos))  # fewer videos: the last one is held out
    held = [v for i, v in enumerate(videos) if i % every == every - 1]
    used = [v for i, v in enumerate(videos) if i % every != every - 1]
    frames, val = _frames(used), _frames(held)  # (N, C, H, W), (M, C, H, W)
    vae = build_autoencoder(recipe, frames.shape[1], frames.shape[2])
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * s / recipe.steps))
    )  # 50 warm-up steps, then cosine to 0
    start, losses = time.perf_counter(), []
    for step in range(1, recipe.steps + 1):
        x = frames[torch.randint(len(frames), (recipe.batch_size,), generator=gen)]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample(generator=gen)).sample
        kl = post.kl().mean() / x[0].numel()  # per pixel
        loss = torch.nn.functional.mse_loss(recon, x) + recipe.kl_weight * kl
        if recipe.shift_weight:
            loss = loss + recipe.shift_weight * shift_loss(vae, x, post.mean, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(step, losses[-1])
    seconds = time.perf_counter() - start
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(frames[i : i + 256]).latent_dist.mode()
                       for i in range(0, min(len(frames), 4096), 256)])  # fmt: skip
        std = float(z.std())
        recon = torch.cat([vae.decode(vae.encode(val[i : i + 256]).latent_dist.mode()).sample
                           for i in range(0, len(val), 256)]).clamp(-1, 1)  # fmt: skip
    vae.register_to_config(scaling_factor=1.0 / std)
    os.makedirs(out, exist_ok=True)
    vae.save_pretrained(out)
    record = {
        "recipe": asdict(recipe),
        "train_videos": len(used), "train_frames": len(frames),
        "heldout_videos": len(held), "heldout_frames": len(val),
        "seconds": round(seconds, 1), "steps_per_second": round(recipe.steps / seconds, 2),
        "final_loss_mean50": float(np.mean(losses[-50:])),
        "heldout_recon_mse": float(((recon - val) ** 2).mean()),
        "heldout_blank_mse": float(((val + 1) ** 2).mean()),
        "latent_std": std, "scaling_factor": 1.0 / std,
        "latent_shape": [recipe.latent_channels, frames.shape[2] // recipe.spatial_compression,
                         frames.shape[3] // recipe.spatial_compression],
    }  # fmt: skip
    with open(os.path.join(out, RECORD_NAME), "w") as f:
        json.dump(record, f, indent=1)
    return record
