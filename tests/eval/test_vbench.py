"""VBench dimensions with VBench's networks: checkpoint layouts, preprocessing, the formula,
errors. Weights are random (the published files are never downloaded) but have the real
architecture; one test per network runs it at its real size."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from flowception.eval.vbench import (
    CLIP_NORM,
    IMAGENET,
    ClipVisual,
    ConsistencyDimension,
    DinoViT,
    dimension_score,
    preprocess,
)

RNG = np.random.default_rng(0)


def _randomise(net: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def _vbench_loop(features: torch.Tensor) -> tuple[float, int]:
    """VBench's per-video loop (subject_consistency.py / background_consistency.py), frame
    by frame: returns ``(video_sim, cnt)``."""
    video_sim, cnt = 0.0, 0
    first = former = None
    for i in range(len(features)):
        f = F.normalize(features[i : i + 1].double(), dim=-1, p=2)
        if i == 0:
            first = f
        else:
            sim_pre = max(0.0, F.cosine_similarity(former, f).item())
            sim_fir = max(0.0, F.cosine_similarity(first, f).item())
            video_sim += (sim_pre + sim_fir) / 2
            cnt += 1
        former = f
    return video_sim, cnt


def _moving_video(frames: int = 5, side: int = 40) -> np.ndarray:
    base = RNG.integers(0, 256, (side, 2 * side, 3), dtype=np.uint8)
    return np.stack([base[:, 3 * t : 3 * t + side] for t in range(frames)])  # (T, H, W, 3)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.slow
def test_dino_real_size_loads_the_published_key_layout(tmp_path: Path):
    net = DinoViT()  # ViT-B/16
    state = net.state_dict()
    assert len(state) == 4 + 12 * 12 + 2
    assert state["pos_embed"].shape == (1, 197, 768) and state["cls_token"].shape == (1, 1, 768)
    assert state["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert state["blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert state["blocks.0.mlp.fc1.weight"].shape == (3072, 768)
    assert {"norm.weight", "blocks.3.norm2.bias", "blocks.5.attn.proj.bias"} <= set(state)
    assert sum(v.numel() for v in state.values()) == 85_798_656  # ViT-B/16 without a head
    path = tmp_path / "dino_vitb16_pretrain.pth"
    torch.save(_randomise(net, 1).state_dict(), path)
    dim = ConsistencyDimension("subject_consistency", path)
    assert dim.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert dim.params()["vbench.subject_consistency.sha256"] == dim.sha256
    video = _moving_video(3)
    emb = dim.embed(video)
    assert emb.shape == (3, 768) and torch.isfinite(emb).all()
    expected = net(preprocess(video, "dino"))
    torch.testing.assert_close(emb, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_clip_real_size_loads_openai_torchscript_layout(tmp_path: Path):
    """OpenAI ships ``ViT-B-32.pt`` as a TorchScript archive of the whole model in fp16."""
    visual = _randomise(ClipVisual(), 2)  # ViT-B/32, 512-d output
    assert visual.positional_embedding.shape == (50, 768) and visual.proj.shape == (768, 512)
    assert visual.conv1.weight.shape == (768, 3, 32, 32) and visual.conv1.bias is None
    keys = set(visual.state_dict())
    assert "transformer.resblocks.11.attn.in_proj_weight" in keys
    assert "transformer.resblocks.0.mlp.c_proj.bias" in keys and "ln_post.weight" in keys

    class Whole(torch.nn.Module):  # the archive holds visual.* next to the text tower
        def __init__(self) -> None:
            super().__init__()
            self.visual = ClipVisual()
            self.token_embedding = torch.nn.Embedding(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    whole = Whole().eval()
    whole.visual.load_state_dict(visual.state_dict())
    whole.half()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.trace(whole.float(), torch.zeros(1, 3, 224, 224)).half().save(str(path))
    dim = ConsistencyDimension("background_consistency", path)
    video = _moving_video(2, side=50)
    expected = visual.half().float()(preprocess(video, "clip"))
    torch.testing.assert_close(dim.embed(video), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- maths


def _clip_reference(net: ClipVisual, x: torch.Tensor) -> torch.Tensor:
    """CLIP's encode_image written out with explicit attention maths (independent of
    nn.MultiheadAttention): pre-norm blocks, QuickGELU, CLS token, ln_post, proj."""
    s = net.state_dict()
    d = s["conv1.weight"].shape[0]
    heads = d // 64
    t = F.conv2d(x, s["conv1.weight"], stride=s["conv1.weight"].shape[-1]).flatten(2).mT
    t = torch.cat([s["class_embedding"].expand(len(x), 1, d), t], 1) + s["positional_embedding"]
    t = F.layer_norm(t, (d,), s["ln_pre.weight"], s["ln_pre.bias"])
    for i in range(len(net.transformer.resblocks)):
        p = f"transformer.resblocks.{i}."
        y = F.layer_norm(t, (d,), s[p + "ln_1.weight"], s[p + "ln_1.bias"])
        q, k, v = (y @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]).chunk(3, -1)
        split = lambda z: z.reshape(*z.shape[:2], heads, 64).transpose(1, 2)  # noqa: E731
        w = torch.softmax(split(q) @ split(k).mT / 8.0, dim=-1)
        a = (w @ split(v)).transpose(1, 2).reshape(t.shape)
        t = t + a @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        y = F.layer_norm(t, (d,), s[p + "ln_2.weight"], s[p + "ln_2.bias"])
        h = y @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"]
        t = (
            t
            + (h * torch.sigmoid(1.702 * h)) @ s[p + "mlp.c_proj.weight"].T
            + s[p + "mlp.c_proj.bias"]
        )
    return F.layer_norm(t[:, 0], (d,), s["ln_post.weight"], s["ln_post.bias"]) @ s["proj"]


def _dino_reference(net: DinoViT, x: torch.Tensor) -> torch.Tensor:
    """DINO's VisionTransformer forward written out: patch conv, CLS + positions, pre-norm
    blocks (LayerNorm eps 1e-6, fused qkv, exact GELU), final norm, CLS token."""
    s = net.state_dict()
    d = s["pos_embed"].shape[-1]
    heads, eps = d // 64, 1e-6
    w = s["patch_embed.proj.weight"]
    t = F.conv2d(x, w, s["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).mT
    t = torch.cat([s["cls_token"].expand(len(x), 1, d), t], 1) + s["pos_embed"]
    for i in range(len(net.blocks)):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        qkv = (y @ s[p + "attn.qkv.weight"].T + s[p + "attn.qkv.bias"]).reshape(
            len(x), -1, 3, heads, 64
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.mT / 8.0, dim=-1) @ v
        t = t + a.transpose(1, 2).reshape(t.shape) @ s[p + "attn.proj.weight"].T
        t = t + s[p + "attn.proj.bias"]
        y = F.layer_norm(t, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps)
        h = F.gelu(y @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"])
        t = t + h @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
    return F.layer_norm(t, (d,), s["norm.weight"], s["norm.bias"], eps)[:, 0]


def test_dino_vit_equals_written_out_forward():
    net = _randomise(DinoViT(dim=128, depth=2), 5, scale=0.1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _dino_reference(net, x), rtol=1e-4, atol=1e-4)


def test_clip_visual_equals_written_out_encode_image():
    net = _randomise(ClipVisual(dim=128, depth=2, patch=32, grid=7, out=32), 3)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _clip_reference(net, x), rtol=1e-4, atol=1e-4)


def test_dino_consistency_is_vbench_loop_and_frame_weighted(tmp_path: Path):
    net = _randomise(DinoViT(dim=64, depth=2), 4, scale=0.3)
    path = tmp_path / "dino_small.safetensors"
    save_file(net.state_dict(), str(path))
    dim = ConsistencyDimension("subject_consistency", path)
    static = np.repeat(_moving_video(1), 6, axis=0)
    still = dim.video(static)
    assert still.pairs == 5 and still.sum == pytest.approx(5.0, abs=1e-9)
    moving = RNG.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)  # unrelated frames
    short = _moving_video(3)
    results = [dim.video(moving), dim.video(short)]
    loops = [_vbench_loop(net(preprocess(v, "dino")).detach()) for v in (moving, short)]
    for got, (video_sim, cnt) in zip(results, loops):
        assert got.pairs == cnt and got.sum == pytest.approx(video_sim, rel=1e-5)
    assert results[0].sum / results[0].pairs < 1.0 - 1e-4
    total = sum(v for v, _ in loops) / sum(c for _, c in loops)  # VBench: sim / cnt
    assert dimension_score(results) == pytest.approx(total, rel=1e-5)
    mean_of_videos = np.mean([r.sum / r.pairs for r in results])
    assert not math.isclose(total, mean_of_videos, rel_tol=1e-9)


def test_preprocessing_resizes_rounds_and_normalises_like_vbench():
    grey = np.full((2, 32, 48, 1), 128, np.uint8)
    x = preprocess(grey, "dino")
    assert x.shape == (2, 3, 224, 336)  # shorter side 224, aspect kept, no crop
    mean, std = torch.tensor(IMAGENET[0]), torch.tensor(IMAGENET[1])
    torch.testing.assert_close(x[0, :, 5, 7], (128 / 255 - mean) / std)
    c = preprocess(grey, "clip")
    assert c.shape == (2, 3, 224, 224)  # centre crop
    mean, std = torch.tensor(CLIP_NORM[0]), torch.tensor(CLIP_NORM[1])
    torch.testing.assert_close(c[1, :, 100, 3], (128 / 255 - mean) / std)
    video = RNG.integers(0, 256, (1, 30, 30, 3), dtype=np.uint8)
    pixels = preprocess(video, "dino") * torch.tensor(IMAGENET[1])[:, None, None]
    pixels = (pixels + torch.tensor(IMAGENET[0])[:, None, None]) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)  # uint8 resize
    with pytest.raises(ValueError, match="expected uint8"):
        preprocess(video.astype(np.float32), "dino")


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_file_and_the_dimension(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ConsistencyDimension("subject_consistency", tmp_path / "none.pth")
    with pytest.raises(ValueError, match="'imaging_quality': MUSIQ"):
        ConsistencyDimension("imaging_quality", tmp_path / "none.pth")
    path = tmp_path / "dino.safetensors"
    save_file(DinoViT(dim=64, depth=1).state_dict(), str(path))
    with pytest.raises(ValueError, match=f"{path}: missing"):
        ConsistencyDimension("background_consistency", path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights")
    with pytest.raises(ValueError, match=f"{junk}: not a safetensors"):
        ConsistencyDimension("subject_consistency", junk)


def test_aesthetic_quality_is_laion_head_on_normalised_clip_over_10(tmp_path: Path):
    """A small CLIP visual tower (the ViT-L/14 class) and a LAION-shaped linear head in one
    directory, as VBench's cache holds them; the score is written out here."""
    from flowception.eval.vbench import AESTHETIC_FILES, load_dimension

    visual = _randomise(ClipVisual(dim=64, depth=1, patch=32, grid=7, out=16), 6, scale=0.2)
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()},
               tmp_path / AESTHETIC_FILES[0])  # fmt: skip
    head = torch.nn.Linear(16, 1)
    torch.save(head.state_dict(), tmp_path / AESTHETIC_FILES[1])
    dim = load_dimension("aesthetic_quality", tmp_path)
    videos = [_moving_video(3), _moving_video(1, side=50)]
    with torch.no_grad():
        expected = [
            float((head(F.normalize(visual(preprocess(v, "clip")), dim=-1)) / 10).mean())
            for v in videos
        ]
    results = [dim.video(v) for v in videos]
    for got, want in zip(results, expected):
        assert got.pairs == 1 and got.sum == pytest.approx(want, rel=1e-5)
    assert dimension_score(results) == pytest.approx(np.mean(expected), rel=1e-5)
    assert len({dim.sha256, dim.head_sha256}) == 2 and "head_sha256" in str(dim.params())
    torch.save(torch.nn.Linear(8, 1).state_dict(), tmp_path / AESTHETIC_FILES[1])
    with pytest.raises(ValueError, match=r"expected nn.Linear\(16, 1\)"):
        load_dimension("aesthetic_quality", tmp_path)
    with pytest.raises(FileNotFoundError, match="needs a directory holding"):
        load_dimension("aesthetic_quality", tmp_path / AESTHETIC_FILES[0])
