"""An export logged as an MLflow model (code, not pickle), registered, loaded and sampled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture()
def export_dir(tmp_path):
    from safetensors.torch import save_file

    from flowception.cluster.config import TrainConfig
    from flowception.model.dit import DiT

    cfg = TrainConfig.from_dict(
        {"model": {"size": "tiny", "frame_size": [8, 8]}, "data": {"size": 8},
         "method": {"num_steps": 4, "max_frames": 6}}
    )  # fmt: skip
    torch.manual_seed(0)
    net = DiT(cfg.model)
    with torch.no_grad():  # non-zero heads, so the weights decide the samples
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "export"
    out.mkdir()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / "ema.safetensors"))
    (out / "config.yaml").write_text(cfg.to_yaml())
    (out / "export.json").write_text(json.dumps({"step": 3}))
    return out, cfg, net


def test_export_is_logged_registered_and_samples_with_its_weights(export_dir, mlflow_server):
    import mlflow
    import pandas as pd

    from flowception.cluster.registry import decode_video, log_exported_model
    from flowception.model.generate import generate

    out, cfg, net = export_dir
    client = mlflow.MlflowClient(mlflow_server)
    exp = client.create_experiment(f"registry-{out.parent.name}")
    run_id = client.create_run(exp, run_name="reg-run").info.run_id
    logged = log_exported_model(out, run_id=run_id, tracking_uri=mlflow_server, name="reg-run")

    assert logged.version == "1"
    versions = client.search_model_versions("name='reg-run'")
    assert [v.run_id for v in versions] == [run_id]
    mlflow.set_tracking_uri(mlflow_server)
    assert [m.model_id for m in mlflow.search_logged_models(experiment_ids=[exp],
                                                            output_format="list")] == [logged.model_id]  # fmt: skip

    # an eval child run of the exported step is tied to this version, both ways
    from flowception.cluster.registry import link_eval_run

    child = client.create_run(exp, run_name="eval").info.run_id
    assert link_eval_run(client, run_id, child, step=2) is None  # not the exported step
    assert link_eval_run(client, run_id, child, step=3) == "reg-run/1"
    assert client.get_run(child).data.tags["flowception.model_version"] == "1"
    assert client.get_model_version("reg-run", "1").tags["flowception.eval_run"] == child

    model = mlflow.pyfunc.load_model(f"models:/reg-run/{logged.version}")
    pred = model.predict(pd.DataFrame({"seed": [0, 5]}), params={"num_steps": 4})
    assert list(pred.columns) == ["length", "video"] and len(pred) == 2
    for seed, length, blob in zip([0, 5], pred["length"], pred["video"]):
        video = decode_video(blob)
        assert video.dtype == np.uint8 and video.shape == (length, 8, 8, 1)
        # the same seed through the same weights, without MLflow: the same pixels
        ref = generate(net, method=cfg.method.replace(task="unconditional"), num_videos=1,
                       generator=torch.Generator().manual_seed(seed), num_steps=4).videos[0]  # fmt: skip
        ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        np.testing.assert_array_equal(video, ref.numpy())


def test_not_an_export_is_named(tmp_path):
    from flowception.cluster.registry import log_exported_model

    with pytest.raises(FileNotFoundError, match="missing"):
        log_exported_model(tmp_path, run_id="x", tracking_uri="http://127.0.0.1:9", name="n")
