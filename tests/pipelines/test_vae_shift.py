"""``VaeRecipe.shift_weight``: an autoencoder whose latent moves with the digit."""

from __future__ import annotations

import numpy as np

from flowception.eval.cli import main


def test_shift_weight_makes_the_latent_move_with_a_digit_moved_less_than_the_stride(tmp_path):
    """Two real AutoencoderKLs (stride 2) trained on the same moving-digit frames, without
    and with the shift loss. Moved one pixel, a held-out digit's latent with the loss is
    several times nearer its unmoved latent moved half a latent pixel, and that is not
    because it barely changes (a latent deaf to position would be near any move): it changes
    more than twice as much as it is off the move. Both still reconstruct (the loss does not
    buy the move with the picture)."""
    from flowception.pipelines.latents import VaeCodec
    from flowception.pipelines.vae_train import (
        VaeRecipe,
        latent_move_error,
        shard_videos,
        train_image_vae,
    )

    shards = tmp_path / "mm"
    assert main(["data", "make-shards", "moving-mnist", "--out", str(shards), "--size", "16",
                 "--num-videos", "48", "--min-frames", "8", "--max-frames", "8", "--digits", "1",
                 "--glyphs", "4"]) == 0  # fmt: skip
    videos, _ = shard_videos(str(shards), size=16, channels=1)
    frames = np.stack([f for v in videos[15::16] for f in v])  # the held-out videos' frames
    cols = (frames[..., 0] > 20).any(axis=1)  # (N, W) columns with ink
    frames = frames[~cols[:, -1] & ~cols[:, -2]]  # room to move right one pixel
    assert len(frames) >= 4
    off, records = {}, {}  # by shift weight
    for weight in (0.0, 0.05):
        recipe = VaeRecipe(steps=400, batch_size=16, block_out_channels=(8, 16),
                           shift_weight=weight)  # fmt: skip
        out = str(tmp_path / f"vae-{weight}")
        records[weight] = train_image_vae(videos, out, recipe)
        off[weight] = latent_move_error(VaeCodec("image", out, "cpu"), frames, 1)
    (_, off_plain), (change, off_shift) = off[0.0], off[0.05]  # (change, off the move)
    assert off_shift < 0.5 * off_plain, off
    assert off_shift < 0.5 * change, off
    for r in records.values():
        assert r["heldout_recon_mse"] < 0.5 * r["heldout_blank_mse"], records
