"""The rate head starts calibrated (issue 17): its initial rate is the training law's mean
``k`` target, and ``diag/rate_calibration`` = sum lambda / sum k over rate-masked frames."""

import pytest
import torch

from flowception.model.config import MethodConfig, model_config
from flowception.model.dit import DiT
from flowception.model.schedule import mean_insertion_target
from flowception.model.training import (
    calibration_warnings,
    rate_calibration,
    rate_calibration_sums,
    training_step,
)


@pytest.mark.parametrize("head", ["exp", "softplus"])
def test_rate_head_starts_at_rate_init_for_every_frame(head):
    cfg = model_config("tiny", frame_size=(8, 8), rate_head=head)
    torch.manual_seed(0)
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    for rate_init in (0.37, 1.0, 3.0):
        out = DiT(cfg, rate_init=rate_init)(x, t, cu)
        torch.testing.assert_close(out.rate, torch.full((5,), rate_init))
    with pytest.raises(ValueError, match="rate_init"):
        DiT(cfg, rate_init=0.0)


def test_mean_insertion_target_is_the_weighted_law_mean():
    """L = 3, n_s = 2: under the E8w law (d ~ U[0, 1), tau_g uniform on [0, d + 1)) the
    missing frame counts k = 1 at its owner iff tau_g < d (probability 1/3) and 2 frames
    flow while tau_g < 1 plus the third once it appears (2 on average): 1/6."""
    assert mean_insertion_target(3, MethodConfig(n_start=2), videos=200_000) == pytest.approx(
        1 / 6, abs=3e-3
    )
    # weakly dependent on the length, always well below exp(0) = 1
    long = mean_insertion_target(32, MethodConfig())
    assert 0.4 < mean_insertion_target(12, MethodConfig()) < long < 0.5
    assert mean_insertion_target(12, MethodConfig(method="full_sequence")) == 1.0


@pytest.mark.parametrize("task", ["unconditional", "image_to_video"])
def test_initialised_head_is_calibrated_and_exp0_is_not(task):
    """A DiT initialised at the target starts with rate_calibration within [0.9, 1.1]; the
    plain zero init (lambda = 1) is 2-3x too high."""
    length, method = 10, MethodConfig(task=task, n_start=2)
    videos = torch.zeros(128, length, 1, 8, 8)
    lengths = torch.full((128,), length)
    cfg = model_config("tiny", frame_size=(8, 8))
    ratio = {}
    for name, init in (("target", mean_insertion_target(length, method)), ("exp0", 1.0)):
        torch.manual_seed(0)
        out = training_step(DiT(cfg, rate_init=init), videos, lengths, method=method,
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
        ratio[name] = rate_calibration(out.stats)
        assert set(ratio[name]) == {"diag/rate_calibration", f"diag/rate_calibration/{task}"}
    assert 0.9 <= ratio["target"]["diag/rate_calibration"] <= 1.1, ratio
    assert ratio["exp0"]["diag/rate_calibration"] > 2.0, ratio


def test_calibration_per_task_by_hand():
    rate = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    k = torch.tensor([1, 0, 2, 1, 3])
    mask = torch.tensor([True, True, True, False, True])
    weight = torch.tensor([1.0, 1.0, 2.0, 2.0, 0.5])
    ctx = torch.tensor([True, True, False, False, False])
    sums = rate_calibration_sums(
        rate, k, mask, weight, {"image_to_video": ctx, "unconditional": ~ctx}
    )
    assert sums == {
        "rate_lambda_sum/image_to_video": 3.0, "rate_k_sum/image_to_video": 1.0,
        "rate_lambda_sum/unconditional": 6.0 + 2.5, "rate_k_sum/unconditional": 4.0 + 1.5,
    }  # fmt: skip
    out = rate_calibration(sums)
    assert out == pytest.approx(
        {
            "diag/rate_calibration/image_to_video": 3.0,
            "diag/rate_calibration/unconditional": 8.5 / 5.5,
            "diag/rate_calibration": 11.5 / 6.5,
        }  # fmt: skip
    )


def test_calibration_warns_only_late_and_outside_the_band():
    metrics = {"diag/rate_calibration": 1.05, "diag/rate_calibration/unconditional": 1.4,
               "diag/rate_calibration/image_to_video": 0.8, "loss": 3.0}  # fmt: skip
    assert calibration_warnings(metrics, 899, 1000) == []
    late = calibration_warnings(metrics, 900, 1000)
    assert len(late) == 2
    assert "image_to_video=0.800" in late[0] and "under" in late[0]
    assert "unconditional=1.400" in late[1] and "over" in late[1]
    assert calibration_warnings({"diag/rate_calibration": 0.95}, 1000, 1000) == []
