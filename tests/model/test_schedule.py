"""Spec oracles 2 and 3: the training sampler per draw and in law."""

import pytest
import torch
from scipy import stats

from flowception.model.config import MethodConfig
from flowception.model.schedule import insertion_targets, sample_training_times


def _draw(lengths, f, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample_training_times(torch.tensor(lengths), f, MethodConfig(**kw), g)


@pytest.mark.parametrize(
    "task", ["unconditional", "image_to_video", "interpolation", "continuation"]
)
@pytest.mark.parametrize("law", ["bounded", "bounded_logit_normal", "uniform02"])
def test_per_draw_invariants(task, law):
    lengths = [12, 3, 7, 12, 5, 9] * 20
    for seed in range(5):
        s = _draw(
            lengths, 12, seed, task=task, tau_g_law=law, n_start=1 if task == "unconditional" else 2
        )
        L = torch.tensor(lengths)
        assert not bool((s.visible & ~s.valid).any()), "padding visible"
        assert bool(s.visible[:, 0].all()), "frame 0 not visible"
        assert bool((s.t[s.is_context] == 1).all())
        assert not bool((s.velocity_mask & s.is_context).any())
        assert bool(s.visible[s.is_context].all())
        flowing = s.visible & ~s.is_context & (s.tau >= 0) & (s.tau < 1)
        assert bool(flowing.any(1).all()), "no flowing frame"
        assert torch.equal(s.k.sum(1), L - s.visible.sum(1))
        assert bool((s.k >= 0).all())
        nonctx = s.valid & ~s.is_context
        assert torch.equal(s.visible[nonctx], (s.tau >= 0)[nonctx])
        assert bool((s.k[~s.visible] == 0).all())


def test_insertion_targets_by_hand():
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    visible = torch.tensor([[1, 0, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    assert insertion_targets(valid, visible).tolist() == [[2, 0, 0, 1, 0, 0, 0, 0]]
    visible = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert insertion_targets(valid, visible).tolist() == [[5, 0, 0, 0, 0, 0, 0, 0]]


def test_delays_uniform_and_visibility_in_law():
    s = _draw([16] * 4000, 16, 1, n_start=2)
    d = s.delay[s.valid & ~s.is_start]
    assert stats.kstest(d.numpy(), "uniform").pvalue > 0.01
    # at a fixed tau_g <= 1 a non-start frame is visible with probability tau_g
    for tg in (0.2, 0.5, 0.8):
        nonstart = s.valid & ~s.is_start
        vis = (tg - s.delay)[nonstart] >= 0
        p = vis.float().mean()
        se = (tg * (1 - tg) / vis.numel()) ** 0.5
        assert abs(float(p) - tg) < 3 * se


def test_global_time_laws_mean():
    n = 20000
    s = _draw([8] * n, 8, 2, tau_g_law="uniform02")
    # E9 with the rejection of spec 4.5: a draw is kept iff some frame flows, i.e. iff
    # tau_g < max_i d_i + 1, so the kept tau_g is uniform on [0, max d + 1)
    tau = s.tau_g[:, None] - s.delay
    assert bool(((tau >= 0) & (tau < 1) & s.valid).any(1).all())
    upper = s.delay.masked_fill(~s.valid, 0).amax(1) + 1
    se = float((s.tau_g - upper / 2).std()) / n**0.5
    assert abs(float(s.tau_g.mean() - (upper / 2).mean())) < 3 * se + 2e-3
    assert stats.kstest((s.tau_g / upper).numpy(), "uniform").pvalue > 0.01
    s = _draw([8] * n, 8, 3, tau_g_law="bounded", n_start=2)
    tau_max = s.delay.masked_fill(~s.valid, 0).amax(1) + 1 - 1e-3
    ratio = s.tau_g / tau_max
    # E8: tau_g = U * tau_max; rejection is rare for n_start = 2 (start frames flow for tau_g < 1)
    assert abs(float(ratio.mean()) - 0.5) < 3 * (1 / 12 / n) ** 0.5 + 5e-3
    assert stats.kstest(ratio.numpy(), "uniform").pvalue > 0.01


def test_short_videos_for_task_are_an_error():
    with pytest.raises(ValueError, match="interpolation"):
        _draw([2, 5], 5, task="interpolation")
    with pytest.raises(ValueError, match="lengths"):
        _draw([6], 5)


def test_uncond_prob_mixes_unconditional_rows_into_context_tasks():
    s = _draw([8] * 2000, 8, 0, task="image_to_video", uncond_prob=0.3)
    has_ctx = s.is_context.any(1).float()
    assert abs(float(has_ctx.mean()) - 0.7) < 3 * (0.21 / 2000) ** 0.5
    assert bool(s.visible[:, 0].all())
    assert bool((s.is_start[:, 0] == ~s.is_context[:, 0]).all())
    with pytest.raises(ValueError, match="uncond_prob"):
        MethodConfig(task="image_to_video", uncond_prob=0.2, n_start=0)
