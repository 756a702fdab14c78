"""Spec oracles 8 (packing) and 9 (attention backends against a dense masked reference)."""

import pytest
import torch
import torch.nn.functional as F

from flowception.model.attention import FramePattern, packed_attention, resolve_backend
from flowception.model.packing import (
    check_cu_seqlens,
    pack,
    pack_index,
    token_cu_seqlens,
    token_positions,
    unpack,
)


def test_pack_unpack_round_trip_and_ranks():
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(4, 6, 2, 3, 3, generator=g)
    visible = torch.rand(4, 6, generator=g) < 0.5
    visible[:, 0] = True
    visible[2] = False
    visible[2, 0] = True
    idx = pack_index(visible)
    packed = pack(frames, idx)
    assert packed.shape == (int(visible.sum()), 2, 3, 3)
    back = unpack(packed, idx)
    assert torch.equal(back[visible], frames[visible])
    assert bool((back[~visible] == 0).all())
    assert idx.cu_seqlens.dtype == torch.int32
    assert idx.cu_seqlens.tolist() == [0, *visible.sum(1).cumsum(0).tolist()]
    tok = token_cu_seqlens(idx.cu_seqlens, 5)
    assert tok.dtype == torch.int32 and tok.tolist() == [5 * c for c in idx.cu_seqlens.tolist()]
    for b in range(4):
        s, e = idx.cu_seqlens[b], idx.cu_seqlens[b + 1]
        assert idx.rank[s:e].tolist() == list(range(int(e - s)))
        assert idx.slot[s:e].tolist() == visible[b].nonzero().flatten().tolist()


def test_token_positions_rate_token_at_centre():
    pos = token_positions(torch.tensor([0, 1, 0]), (2, 4))
    assert pos.shape == (3 * 9, 3)
    assert pos[8].tolist() == [0.0, 0.5, 1.5]
    assert pos[9 + 5].tolist() == [1.0, 1.0, 1.0]
    assert pos[18, 0] == 0


def test_bad_cu_seqlens_name_the_argument():
    with pytest.raises(ValueError, match="int32"):
        check_cu_seqlens(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="end at"):
        check_cu_seqlens(torch.tensor([0, 2], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        check_cu_seqlens(torch.tensor([0, 4, 2, 5], dtype=torch.int32), 5)
    with pytest.raises(ValueError, match="visible"):
        pack_index(torch.ones(2, 3))


def _reference(q, k, v, cu, pattern):
    """Dense block-diagonal masked SDPA built independently of the module under test."""
    t = q.shape[0]
    mask = torch.zeros(t, t, dtype=torch.bool)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for i in range(s, e):
            for j in range(s, e):
                ri, rj = (i - s) // pattern.tokens_per_frame, (j - s) // pattern.tokens_per_frame
                ok = pattern.window is None or abs(ri - rj) <= pattern.window
                ok = ok and (not pattern.causal or rj <= ri)
                mask[i, j] = ok
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask
    )
    return o[0].transpose(0, 1)


@pytest.mark.parametrize("backend", ["cpu", "dense", "auto", "sdpa"])
@pytest.mark.parametrize("window,causal", [(None, False), (1, False), (None, True), (0, False)])
def test_backends_agree_with_dense_reference(backend, window, causal):
    g = torch.Generator().manual_seed(1)
    n_tok = 3
    frames = [4, 1, 7, 2]
    cu = torch.tensor([0, *torch.tensor(frames).cumsum(0).tolist()], dtype=torch.int32) * n_tok
    t = int(cu[-1])
    q, k, v = (torch.randn(t, 2, 8, generator=g) for _ in range(3))
    pattern = FramePattern(tokens_per_frame=n_tok, window=window, causal=causal)
    out = packed_attention(q, k, v, cu, max(frames) * n_tok, backend=backend, pattern=pattern)
    torch.testing.assert_close(out, _reference(q, k, v, cu, pattern), atol=1e-5, rtol=0)


def test_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, None) == "cpu"
    with pytest.raises(ValueError, match="backend='nope'"):
        resolve_backend("nope", cpu, None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash"):
            resolve_backend("flash", cpu, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flash", "sdpa"])
def test_cuda_backends_agree(backend):
    if backend == "flash":
        pytest.importorskip("flash_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    cu = torch.tensor([0, 30, 35, 90], dtype=torch.int32, device="cuda")
    q, k, v = (
        torch.randn(90, 4, 64, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    out = packed_attention(q, k, v, cu, 55, backend=backend)
    ref = packed_attention(q.float(), k.float(), v.float(), cu, 55, backend="dense")
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
