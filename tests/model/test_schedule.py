"""Spec oracles 2 and 3: the training sampler per draw and in law (E4-E12, E8w)."""

import pytest
import torch
from scipy import stats
from torch import special

from flowception.model.config import MethodConfig
from flowception.model.schedule import insertion_targets, sample_training_times


def _draw(lengths, f, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample_training_times(torch.tensor(lengths), f, MethodConfig(**kw), g)


_N_START = {"unconditional": 1, "image_to_video": 2, "interpolation": 0, "continuation": 2}


@pytest.mark.parametrize(
    "task", ["unconditional", "image_to_video", "interpolation", "continuation"]
)
@pytest.mark.parametrize("law", ["bounded", "bounded_logit_normal", "uniform02"])
def test_per_draw_invariants(task, law):
    lengths = [12, 3, 7, 12, 5, 9] * 20
    for seed in range(5):
        s = _draw(lengths, 12, seed, task=task, tau_g_law=law, n_start=_N_START[task])
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


def test_delays_uniform_in_law():
    s = _draw([16] * 4000, 16, 1, n_start=2)
    d = s.delay[s.valid & ~s.is_start]
    assert stats.kstest(d.numpy(), "uniform").pvalue > 0.01


def _visible_fraction_at(s, tau_g: float, half: float = 0.02) -> tuple[float, float]:
    """E8w-weighted fraction of non-start frames that the sampler made visible, over the
    draws whose *drawn* ``tau_g`` is within ``half`` of ``tau_g``; and its standard error
    (ratio estimator, videos as the independent units)."""
    sel = (s.tau_g - tau_g).abs() < half
    w = s.loss_weight.double()[sel]
    nonstart = (s.valid & ~s.is_start & ~s.is_context)[sel]
    v = (s.visible[sel] & nonstart).sum(1).double()
    c = nonstart.sum(1).double()
    p = (w * v).sum() / (w * c).sum()
    se = ((w * (v - p * c)) ** 2).sum().sqrt() / (w * c).sum()
    return float(p), float(se)


@pytest.mark.parametrize("law", ["bounded", "uniform02"])
@pytest.mark.parametrize(("length", "videos"), [(3, 200_000), (16, 40_000), (32, 40_000)])
def test_weighted_visibility_at_drawn_tau_g_is_tau_g(length, videos, law):
    """Oracle 3 with E8w: at a fixed drawn tau_g <= 1 the weighted fraction of visible
    non-start frames is tau_g, for short videos too (L = 3, n_s = 2: 0.58 unweighted)."""
    s = _draw([length] * videos, length, 7, n_start=2, tau_g_law=law)
    for tg in (0.2, 0.5, 0.8):
        p, se = _visible_fraction_at(s, tg)
        assert abs(p - tg) < 3 * se + 2e-3, (tg, p, se)


def test_unweighted_law_is_tilted_for_short_videos():
    """Without E8w the law at fixed tau_g is tilted (spec 4.4: 0.59 at L = 3, tau_g = 0.5),
    which is what the weights remove; the weights are then all ones."""
    s = _draw([3] * 200_000, 3, 7, n_start=2, tau_g_weighting=False)
    assert bool((s.loss_weight == 1).all())
    p, se = _visible_fraction_at(s, 0.5)
    assert abs(p - 0.585) < 3 * se + 2e-3  # ln(1.5) / ln(2)


def test_loss_weight_is_tau_max_over_batch_mean():
    """E8w: w_b = tau_max_b / mean_b' tau_max_b'; off for the logit-normal law."""
    s = _draw([3, 8, 5, 12] * 50, 12, 3, n_start=2)
    cand = s.valid & ~s.is_context
    tau_max = s.delay.masked_fill(~cand, 0).amax(1) + 1 - 1e-3
    torch.testing.assert_close(s.loss_weight, tau_max / tau_max.mean())
    assert s.loss_weight.shape == (200,)
    for kw in (dict(tau_g_law="bounded_logit_normal"), dict(tau_g_weighting=False)):
        assert bool((_draw([3, 8] * 10, 8, 3, **kw).loss_weight == 1).all())


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
        _draw([2, 5], 5, task="interpolation", n_start=0)
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


@pytest.mark.parametrize("law", ["bounded", "bounded_logit_normal", "uniform02"])
def test_stratified_tau_g_keeps_each_videos_law_and_spreads_the_batch(law):
    """``tau_g_stratified``: over many batches each video's ``tau_g`` has E8/E9's law (the
    same as unstratified draws, by a two-sample KS test, per batch position), and within a
    batch of 8 the visible-frame count varies less than with independent draws."""
    b, batches = 8, 3000
    strat, plain = [], []
    for seed in range(batches):
        kw = dict(task="image_to_video", uncond_prob=0.3, tau_g_law=law)
        strat.append(_draw([12] * b, 12, seed, tau_g_stratified=True, **kw))
        plain.append(_draw([12] * b, 12, seed + batches, **kw))
    ts = torch.stack([s.tau_g for s in strat])  # (batches, B)
    tp = torch.stack([s.tau_g for s in plain])
    for j in (0, b - 1):  # any position: each video's marginal is unchanged
        assert stats.ks_2samp(ts[:, j].numpy(), tp[:, j].numpy()).pvalue > 0.001, j
    if law != "uniform02":  # E9 rejects many draws past tau_max: its kept u is not uniform
        # the uniform behind each draw (E8 and the logit-normal law inverted): one in each
        # stratum, and uniform inside its stratum, not only across them
        cand = [s.valid & ~s.is_context for s in strat]
        tau_max = torch.stack([s.delay.masked_fill(~c, 0).amax(1) for s, c in zip(strat, cand)])
        r = ts / (tau_max + 1 - 1e-3)
        u = r if law == "bounded" else special.ndtr(special.logit(r))
        assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 0.001
        within = (u * b).frac().flatten()
        assert stats.kstest(within.numpy(), "uniform").pvalue > 0.001
        strata = (u * b).floor().long().sort(1).values
        share = float((strata == torch.arange(b)).all(1).double().mean())
        assert share > 0.95, share  # rejection redraws the rare video with nothing flowing
    vs = torch.stack([s.visible.sum((0, 1)) for s in strat]).double()
    vp = torch.stack([s.visible.sum((0, 1)) for s in plain]).double()
    assert float(vs.std()) < 0.75 * float(vp.std()), (float(vs.std()), float(vp.std()))
