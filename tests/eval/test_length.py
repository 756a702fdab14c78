"""Length distribution metric: exact on hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from flowception.eval.length import length_distribution


def test_identical_laws():
    s = length_distribution([5, 5, 5, 5], [5, 5])
    assert s.wasserstein == 0.0 and s.mean_generated == s.mean_data == 5.0
    assert s.hist_generated[5] == s.hist_data[5] == 1.0 and s.lengths[-1] == 5


def test_shifted_and_spread_laws():
    s = length_distribution([2, 3, 4], [1, 2, 3])
    assert s.wasserstein == pytest.approx(1.0)  # a shift by one frame
    assert s.mean_generated == 3.0 and s.mean_data == 2.0
    np.testing.assert_allclose(s.hist_generated, [0, 0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(s.hist_data, [0, 1 / 3, 1 / 3, 1 / 3, 0])
    # Half the mass moves 8 frames: W1 = 4.
    t = length_distribution([8, 16], [8, 8])
    assert t.wasserstein == pytest.approx(4.0)
    assert t.metrics() == {
        "length/mean_generated": 12.0,
        "length/mean_data": 8.0,
        "length/mean_difference_se": pytest.approx(np.sqrt(32.0 / 2 + 0.0 / 2)),
        "length/wasserstein": pytest.approx(4.0),
    }


def test_mean_difference_standard_error():
    g, d = [10, 12, 15, 16, 11], [13, 13, 10, 16, 14, 12, 11]
    s = length_distribution(g, d)
    se = np.sqrt(np.var(g, ddof=1) / len(g) + np.var(d, ddof=1) / len(d))
    assert s.mean_difference_se == pytest.approx(se)
    assert s.mean_difference_se == pytest.approx(
        1.3776, abs=1e-4
    )  # by hand: sqrt(6.7 / 5 + 3.905 / 7)
    one = length_distribution([12], [12])  # a sample of one has no spread to read
    assert one.mean_difference_se == 0.0


def test_bad_lengths():
    with pytest.raises(ValueError, match="generated: expected a non-empty"):
        length_distribution([], [1])
    with pytest.raises(ValueError, match="data: lengths must be non-negative integers"):
        length_distribution([1], [1.5])
