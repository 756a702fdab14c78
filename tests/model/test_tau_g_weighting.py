"""Spec E8w: per-video loss weights tau_max / mean(tau_max), in law (oracle 11 for short
videos) and in the losses of a training step (E13, E14)."""

import pytest
import torch

from flowception.model.config import MethodConfig
from flowception.model.dit import ModelOutput
from flowception.model.flops import insertion_phase_ratios
from flowception.model.losses import poisson_nll, velocity_loss
from flowception.model.schedule import sample_training_times
from flowception.model.training import training_step


@pytest.mark.parametrize(("length", "videos"), [(3, 100_000), (8, 60_000), (32, 20_000)])
def test_weighted_insertion_phase_cost_matches_e22(length, videos):
    """Oracle 11 with E8w: weighted visible-frame moments at tau_g <= 1 match E22 (3%);
    unweighted, L = 3 is 4% off in attention."""
    n_s = 2
    s = sample_training_times(torch.full((videos,), length), length, MethodConfig(n_start=n_s),
                              torch.Generator().manual_seed(0))  # fmt: skip
    phase = s.tau_g <= 1
    w = s.loss_weight.double()[phase]
    n = s.visible.sum(1).double()[phase]
    predicted = insertion_phase_ratios(length, n_s)
    attention = float((w * n**2).sum() / w.sum()) / length**2
    tokens = float((w * n).sum() / w.sum()) / length
    assert abs(attention / predicted["attention"] - 1) < 0.03, (attention, predicted)
    assert abs(tokens / predicted["tokens"] - 1) < 0.03, (tokens, predicted)


def test_weights_count_like_repeated_frames():
    """A frame of weight 2 counts as that frame twice, in numerator and denominator."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    mask = torch.tensor([True, True, False])
    w = torch.tensor([2.0, 1.0, 5.0])
    twice = torch.tensor([0, 0, 1])
    expected = velocity_loss(pred[twice], target[twice], torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(velocity_loss(pred, target, mask, w), expected)
    logit, k = torch.tensor([0.3, -0.2, 1.0]), torch.tensor([2, 0, 4])
    expected = poisson_nll(logit[twice], k[twice], torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(poisson_nll(logit, k, mask, weight=w), expected)


def test_training_step_weights_every_loss_term_by_its_video():
    """E13 and E14 of a training step use TrainingTimes.loss_weight per video. Data are zeros,
    so ``x_t = (1 - t) x0`` and the velocity error of a zero prediction is ``x_t / (1 - t)``."""
    seen = {}

    def net(x, t, cu_seqlens, is_context=None, labels=None):
        seen.update(x=x, t=t)
        return ModelOutput(velocity=torch.zeros_like(x), rate_logit=torch.full_like(t, 0.5),
                           rate=torch.full_like(t, 0.5).exp())  # fmt: skip

    lengths = torch.tensor([3, 3, 9, 4, 3, 12, 3, 6])
    method = MethodConfig(n_start=2, cond_drop_prob=0.0)
    out = training_step(net, torch.zeros(8, 12, 1, 2, 2), lengths, method=method,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    times, index = out.times, out.index
    w = times.loss_weight[index.video]  # (n,)
    assert not torch.allclose(times.loss_weight, torch.ones(8))
    vmask = times.velocity_mask[index.video, index.slot]
    rmask = times.rate_mask[index.video, index.slot]
    k = times.k[index.video, index.slot].double()
    t = seen["t"].double()
    err = (seen["x"].double() / (1 - t.clamp(max=0.999))[:, None, None, None]).pow(2)
    per_frame = err.flatten(1).sum(1)
    nll = torch.tensor(0.5).exp() - k * 0.5  # E14 at l = 0.5
    for weight, should_match in ((w.double(), True), (torch.ones_like(w).double(), False)):
        vel = (weight * vmask * per_frame).sum() / (4 * (weight * vmask).sum())
        ins = (weight * rmask * nll).sum() / (weight * rmask).sum()
        got = (float(out.loss.velocity), float(out.loss.insertion))
        match = got == pytest.approx((float(vel), float(ins)), rel=1e-5)
        assert match == should_match, (should_match, got, float(vel), float(ins))
