"""A pipeline's MLflow record as the keys a user and `dyrank resume` rely on: per child run (by kind and rank or job
name) the param, tag, metric and artifact names and the status; values and provenance tags aside."""

from __future__ import annotations

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

PROVENANCE = "dyrank.provenance."


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def record_of(uri: str, parent_id: str) -> dict:
    client = MlflowClient(uri)
    experiment = client.get_run(parent_id).info.experiment_id
    record = {}
    for run in client.search_runs([experiment], run_view_type=ViewType.ALL, max_results=10_000):
        kind = run.data.tags.get("dyrank.kind")
        key = (kind if kind in ("pipeline", "train", "zeroshot") else f"{kind}:{run.info.run_name}"
               if kind == "baseline" else f"{kind}:{run.data.params.get('rank')}")
        tags = sorted(t for t in run.data.tags if (not t.startswith("mlflow.") or t == "mlflow.parentRunId")
                      and not t.startswith(PROVENANCE))
        record[key] = {"params": sorted(run.data.params), "tags": tags, "metrics": sorted(run.data.metrics),
                       "artifacts": sorted(_artifacts(client, run.info.run_id)), "status": run.info.status}
    return record
