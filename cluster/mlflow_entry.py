"""The code MLflow runs to load a logged Flowception model (models from code, no pickle)."""

import mlflow
from mlflow.models import set_model

from flowception.cluster.registry import FlowceptionVideoModel


class _Model(FlowceptionVideoModel, mlflow.pyfunc.PythonModel):
    pass


set_model(_Model())
