"""Pictures people look at instead of reading numbers: a frame grid that shows the
insertion order, the length histogram, and curves of metrics over steps (PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _frame_image(frame: Tensor) -> np.ndarray:
    """``[C, H, W]`` in ``[-1, 1]`` -> ``[H, W]`` or ``[H, W, 3]`` floats in ``[0, 1]``."""
    img = ((frame.detach().float().clamp(-1, 1) + 1) / 2).cpu().numpy()  # (C, H, W)
    return img[0] if img.shape[0] == 1 else img[:3].transpose(1, 2, 0)


def birth_grid(
    videos: Sequence[Tensor],
    births: Sequence[Tensor] | None,
    path: str | Path,
    *,
    max_videos: int = 8,
    max_frames: int = 24,
    title: str = "generated videos (label: iteration the frame was inserted at)",
) -> Path:
    """One row per video, one column per frame; each frame is framed in a colour for
    the sampler iteration at which it was born (spec section 8 trace), so the
    insertion order is visible at a glance.

    Args:
        videos: list of ``[F_b, C, H, W]`` in ``[-1, 1]``.
        births: per video ``[F_b]`` birth iterations (0 = start/context frame), or None.
        path: where to write the PNG.
    """
    plt = pyplot()
    rows = list(videos)[:max_videos]
    cols = max(1, min(max_frames, max(v.shape[0] for v in rows)))
    last = max((int(b.max()) for b in (births or [])[: len(rows)] if b.numel()), default=1) or 1
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.1 * cols, 1.25 * len(rows) + 0.5), squeeze=False
    )
    for r, video in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= video.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(_frame_image(video[c]), cmap="gray", vmin=0, vmax=1)
            if births is not None:
                b = int(births[r][c])
                colour = cmap(b / last)
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
                ax.set_title(str(b), fontsize=7, color="black", pad=1)
        axes[r][0].set_ylabel(f"{video.shape[0]} fr", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def length_histogram(
    generated: Sequence[int],
    data: Sequence[int] | None,
    path: str | Path,
    *,
    title: str = "video lengths",
) -> Path:
    """Histogram of generated video lengths against the data's (Flowception picks its own length)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = [int(v) for v in generated] + [int(v) for v in (data or [])]
    bins = np.arange(min(values) - 0.5, max(values) + 1.5, 1.0)
    if data:
        ax.hist(
            list(data), bins=bins, alpha=0.5, density=True, label=f"data (mean {np.mean(data):.1f})"
        )
    ax.hist(
        list(generated),
        bins=bins,
        alpha=0.5,
        density=True,
        label=f"generated (mean {np.mean(generated):.1f})",
    )
    ax.set_xlabel("frames")
    ax.set_ylabel("share of videos")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def curves(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Line plot of ``name -> [(step, value), ...]`` (loss curves, metrics over checkpoints)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in series.items():
        if not points:
            continue
        steps, values = zip(*sorted(points))
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
