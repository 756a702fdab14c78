"""One source of truth for start frames (spec 4.1 and 8): the training law and the sampler
both begin from ``method.n_start`` frames beside the task's context frames."""

import pytest
import torch

from flowception.model.config import MethodConfig, model_config
from flowception.model.dit import DiT
from flowception.model.generate import generate
from flowception.model.schedule import sample_training_times


@pytest.mark.parametrize(
    ("task", "n_start", "n_ctx"),
    [("unconditional", 2, 0), ("unconditional", 1, 0), ("image_to_video", 2, 1),
     ("image_to_video", 1, 1), ("continuation", 3, 2), ("interpolation", 0, 2)],
)  # fmt: skip
def test_training_and_sampling_start_from_the_same_frames(task, n_start, n_ctx):
    method = MethodConfig(task=task, n_start=n_start, num_steps=2, max_frames=8)
    times = sample_training_times(torch.full((64,), 10), 10, method,
                                  torch.Generator().manual_seed(0))  # fmt: skip
    assert times.is_start.sum(1).tolist() == [n_start] * 64

    torch.manual_seed(0)
    net = DiT(model_config("tiny", frame_size=(8, 8)))
    ctx = [torch.zeros(n_ctx, 1, 8, 8)] * 2 if n_ctx else None
    out = generate(net, method=method, num_videos=2, generator=torch.Generator().manual_seed(0),
                   context=ctx, return_trace=True)  # fmt: skip
    assert out.trace.lengths[0].tolist() == [n_ctx + n_start] * 2  # context + noise frames


def test_config_rejects_start_frames_that_sampling_cannot_reproduce():
    """Interpolation samples from its keyframes alone, so its training law has no start
    frames either: the config refuses n_start > 0 (the default 2) and names the fix."""
    with pytest.raises(ValueError, match=r"n_start=2.*interpolation.*n_start=0"):
        MethodConfig(task="interpolation")
    with pytest.raises(ValueError, match=r"n_start=1.*interpolation"):
        MethodConfig(task="interpolation", n_start=1)
    assert MethodConfig(task="interpolation", n_start=0).n_start == 0
    # the fixed-length baselines draw no start frames
    assert MethodConfig(method="full_sequence", task="interpolation").n_start == 2


def test_videos_with_context_use_n_start_context_in_training_and_sampling():
    """``n_start_context=0``: an image-to-video row trains and samples from its context frame
    alone (every frame is inserted), while the unconditional rows of the same law
    (``uncond_prob``) and unconditional sampling keep ``n_start`` noise frames."""
    method = MethodConfig(task="image_to_video", n_start=2, n_start_context=0, uncond_prob=0.3,
                          num_steps=2, max_frames=8)  # fmt: skip
    times = sample_training_times(torch.full((256,), 10), 10, method,
                                  torch.Generator().manual_seed(0))  # fmt: skip
    has_ctx = times.is_context.any(1)
    assert 0 < int((~has_ctx).sum()) < 256
    assert times.is_start.sum(1).tolist() == [0 if c else 2 for c in has_ctx.tolist()]

    torch.manual_seed(0)
    net = DiT(model_config("tiny", frame_size=(8, 8)))
    for task, ctx, first in (("image_to_video", [torch.zeros(1, 1, 8, 8)] * 2, 1),
                             ("unconditional", None, 2)):  # fmt: skip
        out = generate(net, method=method.replace(task=task), num_videos=2, context=ctx,
                       generator=torch.Generator().manual_seed(0), return_trace=True)  # fmt: skip
        assert out.trace.lengths[0].tolist() == [first] * 2
    with pytest.raises(ValueError, match="n_start_context=-1"):
        MethodConfig(task="image_to_video", n_start_context=-1)
