"""Spec oracle 11 (cost model), the baselines' training laws and samplers, generate(),
EMA, FLOPs and config validation."""

import pytest
import torch

from flowception.model.baselines import autoregressive_times, full_sequence_times
from flowception.model.config import MethodConfig, ModelConfig, model_config
from flowception.model.dit import DiT
from flowception.model.ema import EMA
from flowception.model.flops import forward_flops, insertion_phase_ratios, training_flops
from flowception.model.generate import generate
from flowception.model.packing import ranks_from_cu_seqlens
from flowception.model.sampler import sample
from flowception.model.schedule import sample_training_times


def test_insertion_phase_cost_matches_e22():
    length, n_s = 32, 2
    s = sample_training_times(torch.full((20000,), length), length, MethodConfig(n_start=n_s),
                              torch.Generator().manual_seed(0))  # fmt: skip
    n = s.visible.sum(1).double()
    phase = s.tau_g <= 1  # under E8, tau_g | tau_g <= 1 is uniform on [0, 1]
    predicted = insertion_phase_ratios(length, n_s)
    assert abs(predicted["attention"] - 0.360) < 5e-4
    measured_att = float((n[phase] ** 2).mean()) / length**2
    measured_tok = float(n[phase].mean()) / length
    assert abs(measured_att / predicted["attention"] - 1) < 0.03
    assert abs(measured_tok / predicted["tokens"] - 1) < 0.03
    # E23, the whole law: about 2/3 attention and 3/4 tokens (reported by the benchmark)
    assert abs(float((n**2).mean()) / length**2 - 0.67) < 0.03
    assert abs(float(n.mean()) / length - 0.76) < 0.03


def test_sampler_cost_at_equal_evaluations_e24():
    length, k, b = 32, 50, 16
    used = {"tok": 0.0, "att": 0.0}

    def fn(x, t, cu, **kw):
        c = (cu[1:] - cu[:-1]).double()
        used["tok"] += float(c.sum())
        used["att"] += float((c**2).sum())
        vid, _ = ranks_from_cu_seqlens(cu)
        n = c.float()[vid]
        return torch.zeros_like(x), (length - n) / n

    sample(fn, num_videos=b, frame_shape=(1, 2, 2), num_steps=k, num_start_frames=2,
           max_frames=4 * length, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert abs(used["att"] / (2 * k * b * length**2) - 2 / 3) < 0.05
    assert abs(used["tok"] / (2 * k * b * length) - 3 / 4) < 0.05


def test_flops_counter():
    cfg = model_config("tiny", frame_size=(8, 8))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    f = forward_flops(cu, cfg)
    n_tok = torch.tensor([2.0, 3.0]) * cfg.tokens_per_frame
    assert f["attention"] == pytest.approx(float((4 * n_tok**2 * 32).sum()) * 2)
    assert f["linear"] == pytest.approx(float((24 * n_tok * 32 * 32).sum()) * 2)
    assert training_flops(cu, cfg)["total"] == pytest.approx(3 * f["total"])
    windowed = forward_flops(cu, model_config("tiny", frame_size=(8, 8), window=0))
    assert windowed["attention"] == pytest.approx(f["attention"] * (2 + 3) / (4 + 9))
    causal = forward_flops(cu, model_config("tiny", frame_size=(8, 8), attention="causal"))
    assert causal["attention"] == pytest.approx(f["attention"] * (3 + 6) / (4 + 9))
    both = forward_flops(cu, model_config("tiny", frame_size=(8, 8), attention="causal", window=1))
    assert both["attention"] == pytest.approx(f["attention"] * (3 + 5) / (4 + 9))


def test_full_sequence_and_autoregressive_laws():
    lengths = torch.tensor([6, 3, 5])
    g = torch.Generator().manual_seed(0)
    fs = full_sequence_times(lengths, 6, MethodConfig(method="full_sequence"), g)
    assert torch.equal(fs.visible, fs.valid)
    assert bool((fs.t[fs.valid] == fs.t[:, :1].expand_as(fs.t)[fs.valid]).all())
    assert not bool(fs.rate_mask.any())
    ar = autoregressive_times(
        lengths, 6, MethodConfig(method="autoregressive", task="image_to_video"), g
    )
    assert torch.equal(ar.velocity_mask.sum(1), torch.ones(3, dtype=torch.long))
    j = ar.velocity_mask.float().argmax(1)
    assert bool((j >= 1).all())  # frame 0 is the image-to-video context
    for b in range(3):
        assert ar.visible[b].sum() == j[b] + 1
        assert bool((ar.t[b, : int(j[b])] == 1).all())


@pytest.mark.parametrize("method", ["flowception", "full_sequence", "autoregressive"])
def test_generate_every_method(method):
    torch.manual_seed(0)
    net = DiT(model_config("tiny", frame_size=(8, 8), num_classes=2))
    cfg = MethodConfig(method=method, task="image_to_video", num_steps=3, max_frames=6, num_frames=4,
                       cfg_scale=2.0)  # fmt: skip
    first = [torch.full((1, 1, 8, 8), 0.25), torch.full((1, 1, 8, 8), -0.25)]
    out = generate(net, method=cfg, num_videos=2, generator=torch.Generator().manual_seed(1),
                   labels=torch.tensor([0, 1]), context=first, return_trace=True)  # fmt: skip
    assert len(out.videos) == 2
    for v, c in zip(out.videos, first):
        assert v.shape[1:] == (1, 8, 8) and torch.equal(v[0], c[0])
        assert 2 <= v.shape[0] <= 6
    if method != "flowception":
        assert [v.shape[0] for v in out.videos] == [4, 4]


def test_ema_tracks_and_round_trips():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["weight"], before + 1.0)
    other = EMA(torch.nn.Linear(2, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    target = torch.nn.Linear(2, 2)
    other.copy_to(target)
    torch.testing.assert_close(target.weight, before + 1.0)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


def test_config_validation_names_field_and_value():
    with pytest.raises(ValueError, match=r"patch_size=3"):
        ModelConfig(frame_size=(8, 8), patch_size=3)
    with pytest.raises(ValueError, match=r"MethodConfig.tau_g_law='nope'"):
        MethodConfig(tau_g_law="nope")
    with pytest.raises(ValueError, match=r"context_noise=1.5"):
        MethodConfig(context_noise=1.5)
    with pytest.raises(ValueError, match=r"n_start=0"):
        MethodConfig(n_start=0)
    with pytest.raises(ValueError, match=r"ModelConfig: unknown key 'widht'"):
        ModelConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="model size 'huge'"):
        model_config("huge")
    with pytest.raises(ValueError, match=r"ModelConfig.qk_norm='maybe'"):
        ModelConfig.from_dict({"qk_norm": "maybe"})
    with pytest.raises(ValueError, match=r"ModelConfig.depth=True: expected a number"):
        ModelConfig.from_dict({"depth": True})
    assert ModelConfig.from_dict({"size": "s-64", "width": 128}).width == 128
    cfg = model_config("s-64", num_classes=5, window=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    m = MethodConfig(method="autoregressive", insertion_rule="hierarchical")
    assert MethodConfig.from_dict(m.to_dict()) == m


def test_from_dict_coerces_numbers_and_names_bad_ones():
    cfg = ModelConfig.from_dict({"width": 64.0, "mlp_ratio": "2e0", "frame_size": [8, 8]})
    assert (cfg.width, cfg.mlp_ratio, cfg.frame_size) == (64, 2.0, (8, 8))
    assert type(cfg.width) is int and type(cfg.mlp_ratio) is float
    with pytest.raises(ValueError, match=r"ModelConfig.width=2.5: input should be a valid integer"):
        ModelConfig.from_dict({"width": 2.5})
    with pytest.raises(
        ValueError, match=r"MethodConfig.context_noise='x': input should be a valid number"
    ):
        MethodConfig.from_dict({"context_noise": "x"})


def test_dotted_overrides_parse_values():
    from flowception.config import apply_overrides

    out = apply_overrides(
        {"a": {"b": 1}}, ["a.b=1e-3", "a.c.d=[1, 2]", "x=none", "y='007'", "z=abc"]
    )
    assert out == {"a": {"b": 0.001, "c": {"d": [1, 2]}}, "x": None, "y": "007", "z": "abc"}
    with pytest.raises(ValueError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
