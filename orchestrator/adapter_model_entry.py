"""MLflow models-from-code entry for the selected adapter (see orchestrator/adapter_model.py)."""

from mlflow.models import set_model

from orchestrator.adapter_model import AdapterModel

set_model(AdapterModel())
