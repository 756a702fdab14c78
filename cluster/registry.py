"""Exported checkpoints as MLflow models: a pyfunc that samples videos, logged and registered.

    info = log_exported_model("runs/demo/export", run_id=RUN, tracking_uri=URI, name="demo")
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"seed": [0, 1]}), params={"num_steps": 8})
    out["length"], out["video"]        # frames per video, npy bytes of uint8 [T, H, W, C]

The model is logged as *code* (``cluster/mlflow_entry.py`` calls ``set_model``), not as a
pickle: loading it runs this package's code, never bytes from the artifact store. Its
artifacts are the export (``ema.safetensors`` + ``config.yaml``), so the registry holds
exactly what a sweep evaluates. Each logged model is registered under the run's name.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("mlflow_entry.py")
ARTIFACTS = ("ema.safetensors", "config.yaml", "export.json")
PARAMS = {"num_steps": 0, "max_frames": 0, "task": "unconditional"}
"""Predict-time params (0 = the training method's value)."""


class FlowceptionVideoModel:
    """``predict(DataFrame[seed]) -> DataFrame[length, video]``: one video per input row.

    Subclasses ``mlflow.pyfunc.PythonModel`` at run time (mlflow is imported lazily so the
    module stays importable without it).
    """

    def load_context(self, context: Any) -> None:
        import yaml
        from safetensors.torch import load_file

        from flowception.cluster.config import TrainConfig
        from flowception.model.dit import DiT

        art = context.artifacts
        self.cfg = TrainConfig.from_dict(yaml.safe_load(Path(art["config.yaml"]).read_text()))
        self.net = DiT(self.cfg.model)
        self.net.load_state_dict(load_file(art["ema.safetensors"]))
        self.net.eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch

        from flowception.model.generate import generate

        params = {**PARAMS, **(params or {})}
        method = self.cfg.method.replace(task="unconditional")
        if params["task"] != "unconditional":
            raise ValueError(f"task={params['task']!r}: the served model samples unconditionally")
        rows = []
        for seed in model_input["seed"].astype(int).tolist():
            out = generate(
                self.net, method=method, num_videos=1,
                generator=torch.Generator().manual_seed(seed),
                num_steps=int(params["num_steps"]) or None,
                max_frames=int(params["max_frames"]) or None,
            )  # fmt: skip
            video = out.videos[0]  # (T, C, H, W) in [-1, 1]
            pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            buf = io.BytesIO()
            np.save(buf, pixels.permute(0, 2, 3, 1).numpy(), allow_pickle=False)  # (T, H, W, C)
            rows.append({"length": int(video.shape[0]), "video": buf.getvalue()})
        return pd.DataFrame(rows, columns=["length", "video"])


def signature():
    """Input ``seed: long``; output ``length: long, video: binary``; params of :data:`PARAMS`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "seed")]),
        outputs=Schema([ColSpec("long", "length"), ColSpec("binary", "video")]),
        params=ParamSchema(
            [
                ParamSpec("num_steps", "long", 0),
                ParamSpec("max_frames", "long", 0),
                ParamSpec("task", "string", "unconditional"),
            ]
        ),  # fmt: skip
    )


def decode_video(data: bytes) -> np.ndarray:
    """``uint8 [T, H, W, C]`` from one ``video`` cell of :meth:`FlowceptionVideoModel.predict`."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged export went: ``models:/...`` URI and its registry entry."""

    model_uri: str
    model_id: str | None
    name: str
    version: str | None


def log_exported_model(
    export_dir: str | Path, *, run_id: str, tracking_uri: str, name: str
) -> LoggedModel:
    """Log ``export_dir`` to ``run_id`` as a pyfunc model and register it as ``name``.

    Args:
        export_dir: local output of ``checkpoint.export_weights``.
        run_id: the training run.
        tracking_uri: the MLflow server (its registry must be database-backed).
        name: registered model name (the run's name).
    """
    import mlflow

    export_dir = Path(export_dir)
    missing = [a for a in ARTIFACTS if not (export_dir / a).is_file()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: not an export (missing {missing})")
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={a: str(export_dir / a) for a in ARTIFACTS},
            signature=signature(),
            registered_model_name=name,
            pip_requirements=["flowception"],
        )
    version = getattr(info, "registered_model_version", None)
    step = json.loads((export_dir / "export.json").read_text()).get("step")
    if version is not None and step is not None:
        mlflow.MlflowClient(tracking_uri).set_model_version_tag(
            name, str(version), "flowception.step", str(step)
        )
    log.info("logged model %s (registered %s v%s)", info.model_uri, name, version)
    return LoggedModel(info.model_uri, getattr(info, "model_id", None), name, str(version))


def link_eval_run(
    client: Any, train_run_id: str, eval_run_id: str, step: int | None, qualifier: str | None = None
) -> str | None:
    """Tie an eval child run to the registered model of the same step, both ways.

    The eval run gets ``flowception.model_name`` / ``flowception.model_version`` tags and the
    model version a ``flowception.eval_run`` tag (``flowception.eval_run.<qualifier>`` for
    an evaluation of another task than the training one), so the registry shows what each
    evaluated version scored. Returns ``name/version``, or ``None`` when no version has that
    step (an intermediate checkpoint: only the exported one is registered).
    """
    if step is None:
        return None
    for v in client.search_model_versions(f"run_id='{train_run_id}'"):
        if v.tags.get("flowception.step") == str(step):
            client.set_tag(eval_run_id, "flowception.model_name", v.name)
            client.set_tag(eval_run_id, "flowception.model_version", str(v.version))
            tag = "flowception.eval_run" + (f".{qualifier}" if qualifier else "")
            client.set_model_version_tag(v.name, v.version, tag, eval_run_id)
            return f"{v.name}/{v.version}"
    return None
