"""Spec oracles 1 (path) and 4 (Poisson loss), and the loss normalisation of E13."""

import math

import pytest
import torch

from flowception.model.losses import poisson_nll, velocity_loss
from flowception.model.path import interpolate, velocity_target, warp_time


def test_path_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(3)), x1)
    t, h = torch.full((3,), 0.3, dtype=torch.float64), 1e-6
    fd = (
        interpolate(x0.double(), x1.double(), t + h) - interpolate(x0.double(), x1.double(), t)
    ) / h
    torch.testing.assert_close(fd, velocity_target(x0, x1).double(), atol=1e-6, rtol=0)


def test_time_warp():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(warp_time(t, 1.0), t)
    for s in (0.5, 3.0):
        w = warp_time(t, s)
        assert w[0] == 0 and w[-1] == 1
        assert bool((w[1:] > w[:-1]).all())
    assert bool((warp_time(t, 3.0)[1:-1] < t[1:-1]).all())  # s > 1 spends more time near noise


def test_poisson_loss_value_and_gradient_zero_at_k():
    """``lambda - k log lambda`` (E14 without ``log k!``): stationary at ``lambda = k`` for
    k > 0; at k = 0 the loss is ``lambda`` itself, with gradient 1 pushing the rate to 0."""
    for k in (0.0, 1.0, 3.0, 7.0):
        lam0 = max(k, 1e-3)
        lam = torch.tensor([lam0], dtype=torch.float64, requires_grad=True)
        loss = poisson_nll(lam.log(), torch.tensor([k]), torch.tensor([True]))
        assert loss.item() == pytest.approx(lam0 - k * math.log(lam0), rel=1e-6, abs=1e-9), k
        loss.backward()
        if k > 0:
            assert abs(float(lam.grad)) < 1e-6
        else:
            assert float(lam.grad) == pytest.approx(1.0, rel=1e-5)
    logit = torch.tensor([-2.0, 0.0, 3.0])
    zeros, ones = torch.zeros(3), torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(poisson_nll(logit, zeros, ones), logit.exp().mean())
    torch.testing.assert_close(
        poisson_nll(logit, zeros, ones, "softplus"),
        torch.nn.functional.softplus(logit).mean(),
    )


def test_poisson_fit_converges_to_mean():
    k = torch.tensor([0, 1, 1, 2, 5, 3, 0, 4], dtype=torch.float32)
    for head in ("exp", "softplus"):
        logit = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([logit], lr=0.05)
        for _ in range(2000):
            opt.zero_grad()
            poisson_nll(logit.expand(8), k, torch.ones(8, dtype=torch.bool), head).backward()
            opt.step()
        lam = logit.exp() if head == "exp" else torch.nn.functional.softplus(logit)
        assert abs(lam.item() - k.mean().item()) < 1e-2, head


def test_poisson_mask_and_no_log_of_exp():
    logit = torch.tensor([50.0, 0.0, -3.0])
    k = torch.tensor([2, 1, 0])
    mask = torch.tensor([False, True, True])
    expected = ((1.0 - 0.0) + (torch.exp(torch.tensor(-3.0)) - 0)) / 2
    torch.testing.assert_close(poisson_nll(logit, k, mask), expected)
    assert torch.isfinite(
        poisson_nll(torch.tensor([80.0]), torch.tensor([3]), torch.tensor([False]))
    )


def test_velocity_loss_is_mean_over_eligible_elements():
    pred = torch.zeros(3, 2, 2, 2)
    target = torch.stack([torch.full((2, 2, 2), v) for v in (1.0, 2.0, 100.0)])
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(velocity_loss(pred, target, mask), torch.tensor((1.0 + 4.0) / 2))
