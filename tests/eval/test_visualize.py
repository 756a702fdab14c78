"""The PNGs people look at are written and show what they claim."""

import numpy as np
import torch
from PIL import Image

from flowception.eval.visualize import birth_grid, curves, length_histogram


def test_birth_grid_colours_frames_by_birth(tmp_path):
    videos = [torch.zeros(3, 1, 8, 8), torch.zeros(2, 1, 8, 8)]
    births = [torch.tensor([0, 5, 10]), torch.tensor([0, 10])]
    path = birth_grid(videos, births, tmp_path / "grid.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 50 and img.shape[1] > 50
    # viridis: birth 0 is dark purple, the last birth bright yellow; both must be drawn
    yellow = (img[..., 0] > 200) & (img[..., 1] > 200) & (img[..., 2] < 80)
    purple = (img[..., 0] > 50) & (img[..., 0] < 90) & (img[..., 1] < 20) & (img[..., 2] > 70)
    assert yellow.sum() > 20 and purple.sum() > 20


def test_length_histogram_and_curves(tmp_path):
    p = length_histogram([8, 7, 9, 8], [8, 8, 6], tmp_path / "h.png")
    q = curves({"loss": [(1, 2.0), (2, 1.0)], "fvd": [(2, 3.0)]}, tmp_path / "c.png", title="t")
    for path in (p, q):
        assert Image.open(path).size[0] > 300
