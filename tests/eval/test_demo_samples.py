"""The demo's sampling stage (``eval.demo.samples``, also ``benchmarks/guidance_probe.py``)
on a real exported class-conditional DiT: its videos are drawn with the test clips'
classes, as the eval job's generation actor draws them."""

from __future__ import annotations

import dataclasses
import json
import tarfile

import numpy as np
import pytest
import torch

from flowception.cluster.config import load_config
from flowception.eval import demo
from flowception.eval.digits import read_gifs


def _export(out, overrides: list[str]):
    """An export folder of a tiny pixel DiT whose conditioning matters: the AdaLN and head
    layers, zero at initialisation, drawn at random."""
    from safetensors.torch import save_file

    from flowception.model.dit import DiT

    cfg = load_config("configs/demo-cpu.yaml", ["method.num_steps=4", "method.max_frames=6",
                                                *overrides])  # fmt: skip
    torch.manual_seed(0)
    net = DiT(cfg.model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "adaLN" in name or "head" in name or "y_embedder" in name:
                p.normal_(0.0, 0.3)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, out / "model.safetensors")
    save_file(state, out / "ema.safetensors")
    (out / "config.yaml").write_text(cfg.to_yaml())
    return out, net.eval(), cfg


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A class-conditional one (10 classes)."""
    return _export(tmp_path_factory.mktemp("export"), ["model.num_classes=10"])


@pytest.fixture(scope="module")
def test_shards(tmp_path_factory):
    """6 test clips, one digit each; their classes read from the shard's JSON."""
    from flowception.eval.cli import main as cli
    from flowception.pipelines.shards import list_shards

    out = tmp_path_factory.mktemp("data") / "test"
    args = ["data", "make-shards", "moving-mnist", "--out", str(out), "--size", "32",
            "--split", "test", "--num-videos", "6", "--min-frames", "10", "--max-frames", "12",
            "--digits", "1"]  # fmt: skip
    assert cli(args) == 0
    with tarfile.open(list_shards(str(out))[0].url) as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".json"))
        classes = [json.load(tar.extractfile(n))["label"] for n in names]
    return str(out), classes


def test_a_class_conditional_run_is_sampled_with_the_clips_classes(export, test_shards, tmp_path):
    from flowception.cluster.videos import write_video
    from flowception.model.generate import generate

    folder, net, cfg = export
    shards, classes = test_shards
    assert len(set(classes)) > 1, classes  # otherwise a constant label would pass
    plan = dataclasses.replace(demo.DemoPlan.make(quick=True, steps=None), sample_videos=4)
    demo.samples(str(folder), {"test": shards}, tmp_path / "demo", plan, "", None)
    got = read_gifs(tmp_path / "demo" / "samples" / "unconditional")

    def drawn(labels: torch.Tensor | None, name: str) -> list[np.ndarray]:
        out = generate(net, method=cfg.method.replace(task="unconditional"), num_videos=4,
                       generator=torch.Generator().manual_seed(0), labels=labels)  # fmt: skip
        (tmp_path / name).mkdir()
        for i, v in enumerate(out.videos):
            write_video(v, tmp_path / name / f"video_{i:02d}", fmt="gif")
        return read_gifs(tmp_path / name)

    def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
        return len(a) == len(b) and all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b))

    assert same(got, drawn(torch.as_tensor(classes[:4]), "with_classes"))
    assert not same(got, drawn(None, "without"))  # the labels change what is drawn


def test_interpolation_samples_keep_each_clips_first_and_last_frames(test_shards, tmp_path):
    """``tasks=("interpolation",)``: the keyframes are each test clip's first and last
    frames, kept clean and in order in its video (the model decides how many frames each
    gap gets; this untrained one also inserts after the last keyframe, which a trained one
    learns not to: nothing follows a clip's last frame in training)."""
    from flowception.eval.digits import real_clips

    folder, _, _ = _export(tmp_path, ["method.task=interpolation", "method.n_start=0"])
    shards, _ = test_shards
    plan = dataclasses.replace(demo.DemoPlan.make(quick=True, steps=None), sample_videos=3)
    demo.samples(str(folder), {"test": shards}, tmp_path / "demo", plan, "", None,
                 tasks=("interpolation",))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "demo" / "samples").iterdir()) == ["interpolation"]
    got = read_gifs(tmp_path / "demo" / "samples" / "interpolation")
    real = real_clips(shards, 32)[:3]
    assert len(got) == 3
    for video, clip in zip(got, real):
        first = [int(np.abs(f.astype(int) - clip[0]).max()) for f in video]
        last = [int(np.abs(f.astype(int) - clip[-1]).max()) for f in video]
        assert first[0] <= 2, first  # gif rounding
        assert min(last[1:]) <= 2, last  # the last keyframe, after the first
    with pytest.raises(ValueError, match="continuation"):  # before the export is read
        demo.samples(str(tmp_path / "no-export"), {"test": shards}, tmp_path / "x", plan, "",
                     None, tasks=("continuation",))  # fmt: skip
