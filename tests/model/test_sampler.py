"""Spec oracles 5, 6, 7 and 10, prescribed orders (E25), context frames and the cap."""

import pytest
import torch

from flowception.model.packing import ranks_from_cu_seqlens
from flowception.model.path import exact_point_mass_velocity
from flowception.model.sampler import Context, Guidance, apply_guidance, reveal_order, sample

SHAPE = (1, 4, 4)


def exact_length_rate(length):
    """Rate of a video with n visible frames when all data videos have length L: (L - n) / n."""

    def fn(x, t, cu, **kw):
        vid, _ = ranks_from_cu_seqlens(cu)
        n = (cu[1:] - cu[:-1]).float()[vid]
        return torch.zeros_like(x), (length - n) / n

    return fn


def test_point_mass_reaches_data_whatever_birth_time():
    m = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))

    def fn(x, t, cu, **kw):
        return exact_point_mass_velocity(x, t, m.expand_as(x)), torch.full((x.shape[0],), 0.7)

    out = sample(fn, num_videos=6, frame_shape=SHAPE, num_steps=25, num_start_frames=2,
                 max_frames=12, generator=torch.Generator().manual_seed(0), return_trace=True)  # fmt: skip
    births = torch.cat(out.trace.birth)
    assert births.max() > 10, "expected frames born late in sampling"
    for v in out.videos:
        torch.testing.assert_close(v, m.expand_as(v), atol=1e-5, rtol=0)


def test_length_law_matches_data_length():
    length = 8
    out = sample(exact_length_rate(length), num_videos=48, frame_shape=SHAPE, num_steps=200,
                 num_start_frames=1, max_frames=4 * length, generator=torch.Generator().manual_seed(0))  # fmt: skip
    lens = torch.tensor([v.shape[0] for v in out.videos], dtype=torch.float32)
    assert abs(float(lens.mean()) - length) < 0.5
    assert float((lens == length).float().mean()) > 0.5


def test_zero_rate_no_insertion():
    def fn(x, t, cu, **kw):
        return torch.zeros_like(x), torch.zeros(x.shape[0])

    out = sample(fn, num_videos=3, frame_shape=SHAPE, num_steps=10, num_start_frames=2,
                 max_frames=10, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [v.shape[0] for v in out.videos] == [2, 2, 2]


def test_no_insertion_once_clock_reaches_one():
    seen = []

    def fn(x, t, cu, **kw):
        seen.append(x.shape[0])
        return torch.zeros_like(x), torch.full((x.shape[0],), 1e6)

    out = sample(fn, num_videos=1, frame_shape=SHAPE, num_steps=5, num_start_frames=1,
                 max_frames=1000, generator=torch.Generator().manual_seed(0), return_trace=True)  # fmt: skip
    lengths = out.trace.lengths[:, 0]
    # the clock reaches 1 after K = 5 iterations: lengths never change after that
    assert bool((lengths[5:] == lengths[5]).all())
    # at most one new frame per gap per iteration: length at most doubles
    assert bool((lengths[1:] <= 2 * lengths[:-1]).all())


@pytest.mark.parametrize("rate", [0.0, 0.5, 3.0, float("inf")])
def test_termination_bounds(rate):
    k = 12

    def fn(x, t, cu, **kw):
        return torch.randn_like(x), torch.full((x.shape[0],), rate)

    out = sample(fn, num_videos=5, frame_shape=SHAPE, num_steps=k, num_start_frames=2,
                 max_frames=9, generator=torch.Generator().manual_seed(3), return_trace=True)  # fmt: skip
    assert out.trace.iterations <= 2 * k
    assert max(v.shape[0] for v in out.videos) <= 9
    assert bool((out.trace.lengths <= 9).all())


def test_non_finite_velocity_never_reaches_finished_frames():
    def fn(x, t, cu, **kw):
        v = torch.zeros_like(x)
        v[t >= 1] = float("nan")
        return v, torch.full((x.shape[0],), 0.5)

    out = sample(fn, num_videos=2, frame_shape=SHAPE, num_steps=6, num_start_frames=2,
                 max_frames=8, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert all(bool(torch.isfinite(v).all()) for v in out.videos)


def test_guidance_identity_at_scale_one():
    g = torch.Generator().manual_seed(0)
    v_c, v_u = torch.randn(5, *SHAPE, generator=g), torch.randn(5, *SHAPE, generator=g)
    lam_c, lam_u = torch.rand(5, generator=g), torch.rand(5, generator=g)
    v, lam = apply_guidance(v_c, lam_c, v_u, lam_u, 1.0, 1.0)
    assert torch.equal(v, v_c) and torch.equal(lam, lam_c)
    v, lam = apply_guidance(v_c, lam_c, v_u, lam_u, 2.0, 0.0)
    torch.testing.assert_close(v, 2 * v_c - v_u)
    torch.testing.assert_close(lam, lam_u)


def test_guidance_is_used_in_sampling():
    calls = {"u": 0}

    def cond(x, t, cu, **kw):
        return torch.zeros_like(x), torch.full((x.shape[0],), 0.01)

    def uncond(x, t, cu, **kw):
        calls["u"] += 1
        return torch.zeros_like(x), torch.full((x.shape[0],), 10.0)

    kw = dict(num_videos=4, frame_shape=SHAPE, num_steps=10, num_start_frames=1, max_frames=50)
    off = sample(cond, guidance=Guidance(uncond), generator=torch.Generator().manual_seed(0), **kw)
    assert calls["u"] == 0
    on = sample(
        cond,
        guidance=Guidance(uncond, insertion_scale=0.0),
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    assert calls["u"] > 0
    assert sum(v.shape[0] for v in on.videos) > sum(v.shape[0] for v in off.videos)


@pytest.mark.parametrize(
    "rule,expected",
    [
        ("left_to_right", [0, 1, 2, 3, 4, 5, 6]),
        ("hierarchical", [0, 6, 3, 1, 4, 2, 5]),
    ],
)
def test_reveal_orders(rule, expected):
    assert reveal_order(rule, 7, torch.Generator().manual_seed(0)) == expected


def _expected_births(order: list[int], n_start: int, k_steps: int) -> torch.Tensor:
    """Birth iteration of every slot under E25, written out: slot ``order[j]`` (j >= n_s)
    appears at the first clock c with ``n_s + floor((L* - n_s) c / K) > j``; start slots at 0."""
    length = len(order)
    births = torch.zeros(length, dtype=torch.long)
    for j, slot in enumerate(order[n_start:], start=n_start):
        births[slot] = next(
            c for c in range(1, k_steps + 1) if n_start + (length - n_start) * c // k_steps > j
        )
    return births


@pytest.mark.parametrize("rule", ["left_to_right", "hierarchical", "random"])
def test_prescribed_orders_reveal_exactly_target(rule):
    """Lengths hit L*, and every slot is born at the iteration E25 gives its rank in the
    reveal order; the random order is re-drawn here independently of ``reveal_order``
    (slot 0 first, then a permutation of 1 .. L*-1 from the same generator)."""
    targets, k_steps, n_start = [7, 5, 9], 10, 2
    out = sample(exact_length_rate(100), num_videos=3, frame_shape=SHAPE, num_steps=k_steps,
                 num_start_frames=n_start, max_frames=50, generator=torch.Generator().manual_seed(4),
                 return_trace=True, insertion_rule=rule, target_lengths=targets)  # fmt: skip
    assert [v.shape[0] for v in out.videos] == targets
    g = torch.Generator().manual_seed(4)  # the sampler draws the random orders first
    births_by_slot = {}
    for i, length in enumerate(targets):
        if rule == "random":
            order = [0, *(torch.randperm(length - 1, generator=g) + 1).tolist()]
        else:
            order = reveal_order(rule, length, g)
        births_by_slot[i] = out.trace.birth[i]  # final position p holds slot p
        expected = _expected_births(order, n_start, k_steps)
        assert torch.equal(births_by_slot[i], expected), (rule, i, order, births_by_slot[i])
        assert int((births_by_slot[i] == 0).sum()) == n_start
    if rule == "random":  # the draw is not the left-to-right order in disguise
        assert any(not bool((b[1:] >= b[:-1]).all()) for b in births_by_slot.values()), (
            births_by_slot
        )


def test_context_frames_kept_clean_and_first():
    ctx = [
        torch.full((1, *SHAPE), 0.5),
        torch.stack([torch.full(SHAPE, 0.5), torch.full(SHAPE, -0.5)]),
    ]
    seen = {}

    def fn(x, t, cu, is_context=None):
        seen["ctx"] = is_context
        assert bool((t[is_context] == 1).all())
        return torch.ones_like(x), torch.full((x.shape[0],), 0.8)

    out = sample(fn, num_videos=2, frame_shape=SHAPE, num_steps=8, num_start_frames=1,
                 max_frames=12, context=Context(ctx), generator=torch.Generator().manual_seed(0),
                 return_trace=True)  # fmt: skip
    assert seen["ctx"] is not None
    assert torch.equal(out.videos[0][0], ctx[0][0])
    # interpolation-style keyframes stay in order; frames may be inserted between them
    v1 = out.videos[1]
    keep = [
        j for j in range(v1.shape[0]) if bool((v1[j] == 0.5).all()) or bool((v1[j] == -0.5).all())
    ]
    assert [float(v1[j].mean()) for j in keep] == [0.5, -0.5]


def test_sampler_is_bitwise_repeatable():
    def run():
        return sample(exact_length_rate(6), num_videos=3, frame_shape=SHAPE, num_steps=8,
                      num_start_frames=2, max_frames=10, generator=torch.Generator().manual_seed(7))  # fmt: skip

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a.videos, b.videos))


def test_bad_arguments_name_the_value():
    fn = exact_length_rate(4)
    with pytest.raises(ValueError, match="max_frames=1"):
        sample(fn, num_videos=1, frame_shape=SHAPE, num_steps=4, num_start_frames=2, max_frames=1)
    with pytest.raises(ValueError, match="target_lengths"):
        sample(fn, num_videos=1, frame_shape=SHAPE, num_steps=4, num_start_frames=2,
               max_frames=8, insertion_rule="random")  # fmt: skip
