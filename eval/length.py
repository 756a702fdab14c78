"""Length distribution of generated videos against the data (Flowception chooses its length).

The spec's own addition to the evaluation (section 12): means, integer histograms and the
1-D Wasserstein distance (``scipy.stats.wasserstein_distance``, in frames) between the
lengths of generated and of data videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats


@dataclass(frozen=True, kw_only=True)
class LengthStats:
    """Length law of generated videos against the data."""

    mean_generated: float
    """Mean length of the generated videos (frames)."""
    mean_data: float
    """Mean length of the data videos (frames)."""
    mean_difference_se: float
    """Standard error of ``mean_generated - mean_data`` from both samples' variances
    (``sqrt(s_g^2 / n_g + s_d^2 / n_d)``, 0 for a sample of one): with 32 videos a side and
    lengths uniform on 10-16 it is about 0.5 frames, 4 % of the mean, so a mean within 5 %
    of the data's is only a little more than one standard error."""
    wasserstein: float
    """1-D Wasserstein (earth mover's) distance between the two length laws, in frames."""
    lengths: np.ndarray
    """``(K,)`` the integer lengths ``0 .. max`` the histograms count."""
    hist_generated: np.ndarray
    """``(K,)`` fraction of generated videos of each length."""
    hist_data: np.ndarray
    """``(K,)`` fraction of data videos of each length."""

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow ``log_metrics``."""
        return {
            "length/mean_generated": self.mean_generated,
            "length/mean_data": self.mean_data,
            "length/mean_difference_se": self.mean_difference_se,
            "length/wasserstein": self.wasserstein,
        }


def _as_lengths(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"{name}: lengths must be non-negative integers, got {arr[:5]}")
    return arr.astype(np.int64)


def _var(x: np.ndarray) -> float:
    """Sample variance (``ddof=1``); 0 for a single value."""
    return float(x.var(ddof=1)) if x.size > 1 else 0.0


def length_distribution(
    generated: Sequence[int] | np.ndarray, data: Sequence[int] | np.ndarray
) -> LengthStats:
    """Compare the lengths of generated videos with those of the data.

    Args:
        generated: Frame count of every generated video.
        data: Frame count of every data video (e.g. the eval split's lengths).

    Returns:
        Means, normalised histograms over ``0 .. max length`` and the Wasserstein distance.
    """
    g, d = _as_lengths(generated, "generated"), _as_lengths(data, "data")
    size = int(max(g.max(), d.max())) + 1
    return LengthStats(
        mean_generated=float(g.mean()),
        mean_data=float(d.mean()),
        mean_difference_se=float(np.sqrt(_var(g) / g.size + _var(d) / d.size)),
        wasserstein=float(scipy.stats.wasserstein_distance(g, d)),
        lengths=np.arange(size),
        hist_generated=np.bincount(g, minlength=size) / g.size,  # (K,)
        hist_data=np.bincount(d, minlength=size) / d.size,  # (K,)
    )
