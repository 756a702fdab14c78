"""The DiT on packed batches: no leakage across videos (oracle 8), local attention,
gradients to both heads, repeatability, and overfitting one batch."""

import pytest
import torch

from flowception.model.config import MethodConfig, model_config
from flowception.model.dit import DiT
from flowception.model.packing import nearest_context_on_left, ranks_from_cu_seqlens
from flowception.model.training import training_step


def tiny(**kw):
    torch.manual_seed(0)
    net = DiT(model_config("tiny", frame_size=(8, 8), **kw))
    # move the zero-initialised output layers off zero so outputs depend on the input
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 0:
                p.normal_(0, 0.05)
    return net


def _inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    x = torch.randn(n, 1, 8, 8, generator=g)
    t = torch.rand(n, generator=g)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return x, t, cu


@pytest.mark.parametrize("backend", ["cpu", "dense"])
@pytest.mark.parametrize("window", [None, 1])
def test_no_leakage_across_videos(backend, window):
    net = tiny(attention_backend=backend, window=window, num_classes=3).eval()
    x, t, cu = _inputs([3, 5])
    labels = torch.tensor([2, -1])
    both = net(x, t, cu, labels=labels)
    a = net(x[:3], t[:3], torch.tensor([0, 3], dtype=torch.int32), labels=labels[:1])
    b = net(x[3:], t[3:], torch.tensor([0, 5], dtype=torch.int32), labels=labels[1:])
    torch.testing.assert_close(
        both.velocity, torch.cat([a.velocity, b.velocity]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(both.rate, torch.cat([a.rate, b.rate]), atol=1e-5, rtol=1e-5)


def test_backends_agree_at_model_level():
    x, t, cu = _inputs([2, 4, 1])
    out = {b: tiny(attention_backend=b, window=1)(x, t, cu) for b in ("cpu", "dense")}
    torch.testing.assert_close(out["cpu"].velocity, out["dense"].velocity, atol=1e-5, rtol=0)


def test_local_window_limits_receptive_field():
    net = tiny(window=1).eval()
    x, t, cu = _inputs([6])
    base = net(x, t, cu).velocity
    x2 = x.clone()
    x2[5] += 1.0  # frame 5 is 5 ranks from frame 0: with W = 1 and 2 blocks, frame 0 sees <= 2 away
    moved = net(x2, t, cu).velocity
    assert torch.equal(base[0], moved[0])
    assert not torch.equal(base[4], moved[4])
    full = tiny().eval()
    assert not torch.equal(full(x, t, cu).velocity[0], full(x2, t, cu).velocity[0])


def test_rank_positions_shift_with_insertions():
    """Identical frames differ only by their rank, which enters through RoPE's time axis:
    without it attention is permutation-equivariant and every copy gives the same output.
    Inserting a copy shifts the ranks after it, and the shifted frame's output follows
    its new rank; ranks restart at 0 in each packed video."""
    net = tiny().eval()
    frame = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.full((1,), 0.4)

    def run(copies: list[int]) -> list[torch.Tensor]:
        n = sum(copies)
        cu = torch.tensor([0, *torch.tensor(copies).cumsum(0).tolist()], dtype=torch.int32)
        out = net(frame.expand(n, -1, -1, -1), t.expand(n), cu).velocity  # (n, 1, 8, 8)
        return list(out.split(copies))

    (three,) = run([3])
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert (three[i] - three[j]).abs().max() > 1e-4, (i, j)  # rank alone separates them
    (four,) = run([4])  # a copy inserted before frame 1: old frames 1, 2 now at ranks 2, 3
    assert (four[2] - three[1]).abs().max() > 1e-4  # the shifted frame moved with its rank
    assert (four[2] - four[1]).abs().max() > 1e-4
    a, b = run([3, 4])  # packed: the second video's ranks start at 0 again
    torch.testing.assert_close(a, three, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, four, atol=1e-5, rtol=0)


def test_zero_init_outputs():
    net = DiT(model_config("tiny", frame_size=(8, 8)))
    x, t, cu = _inputs([2, 2])
    out = net(x, t, cu)
    assert bool((out.velocity == 0).all())
    assert torch.equal(out.rate, torch.ones(4))


def test_gradients_reach_both_heads():
    net = DiT(model_config("tiny", frame_size=(8, 8)))
    videos = torch.randn(2, 6, 1, 8, 8)
    out = training_step(net, videos, torch.tensor([6, 4]), method=MethodConfig(),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    out.loss.total.backward()
    assert net.velocity_head.linear.weight.grad.abs().sum() > 0
    assert net.rate_head.mlp[-1].weight.grad.abs().sum() > 0
    assert out.loss.insertion.item() != 0


def test_bad_input_shapes_name_the_argument():
    net = tiny()
    x, t, cu = _inputs([2, 2])
    with pytest.raises(ValueError, match=r"x: expected \[n, 1, 8, 8\]"):
        net(x[:, :, :4], t, cu)
    with pytest.raises(ValueError, match="t: expected"):
        net(x, t[:3], cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        net(x, t, torch.tensor([0, 1, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="labels"):
        tiny(num_classes=2)(x, t, cu, labels=torch.tensor([5, 0]))


def test_training_step_bitwise_repeatable():
    def run():
        net = tiny(num_classes=2)
        videos = torch.randn(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        out = training_step(net, videos, torch.tensor([5, 3, 4]), method=MethodConfig(task="image_to_video"),
                            generator=torch.Generator().manual_seed(2), labels=torch.tensor([0, 1, 1]))  # fmt: skip
        out.loss.total.backward()
        return out.loss.total.detach(), net.blocks[0].qkv.weight.grad.clone()

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2) and torch.equal(g1, g2)


def test_overfits_one_packed_batch():
    torch.manual_seed(0)
    net = DiT(model_config("tiny", frame_size=(8, 8), width=64, heads=4))
    videos = torch.randn(3, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    lengths = torch.tensor([6, 4, 5])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    method = MethodConfig(cond_drop_prob=0.0)
    losses = []
    for _ in range(150):
        out = training_step(
            net, videos, lengths, method=method, generator=torch.Generator().manual_seed(5)
        )
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        losses.append(out.loss.total.item())
    # E14's minimum over lambda is at lambda = k: the loss floor of this fixed batch
    k = out.times.k[out.times.rate_mask].double()
    floor = float(torch.where(k > 0, k - k * k.log(), torch.zeros_like(k)).mean())
    assert losses[-1] - floor < (losses[0] - floor) / 10, (floor, losses[::30])


def test_block_causal_attention_hides_later_frames():
    x, t, cu = _inputs([4])
    x2 = x.clone()
    x2[3] += 1.0
    causal = tiny(attention="causal").eval()
    a, b = causal(x, t, cu).velocity, causal(x2, t, cu).velocity
    assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3], b[3])
    full = tiny().eval()
    assert not torch.equal(full(x, t, cu).velocity[0], full(x2, t, cu).velocity[0])


def test_nearest_context_stream_reaches_frames_without_attention():
    """``context_stream=nearest_context`` (passive context, spec section 10): with window 0
    (a frame attends to itself only) a frame still sees the nearest context frame on its
    left, in its own video only; ``context_frames`` (the default) does not."""
    x, t, cu = _inputs([4, 3])
    is_ctx = torch.tensor([False, True, False, False, False, True, False])
    x2 = x.clone()
    x2[1] += 1.0  # change video 0's context frame
    x2[5] -= 1.0  # and video 1's
    for mode, reached in (("nearest_context", [2, 3, 6]), ("context_frames", [])):
        net = tiny(window=0, context_stream=mode).eval()
        base, moved = net(x, t, cu, is_context=is_ctx), net(x2, t, cu, is_context=is_ctx)
        changed = [
            i
            for i in range(7)
            if i not in (1, 5) and not torch.equal(base.velocity[i], moved.velocity[i])
        ]
        assert changed == reached, mode
    # frames 0 and 4 are left of their video's context frame: nothing, not video 0's frame 1
    rank = ranks_from_cu_seqlens(cu)[1]
    assert nearest_context_on_left(is_ctx, rank).tolist() == [-1, 1, 1, 1, -1, 5, 5]
