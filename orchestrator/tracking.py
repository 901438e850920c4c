"""MLflow, written by the driver alone: actors return results, this module records them.

With the embedded sqlite store only one process may write ("database is locked" otherwise), so every
run, metric and artifact goes through here. Child runs are created with `mlflow.parentRunId` set
explicitly (never through MLFLOW_RUN_ID, which would make every worker write into one run).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.tracking import MlflowClient

from orchestrator.errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "dyrank.kind"
FAILURE_TAG = "dyrank.failure_reason"


def resolve_tracking_uri(configured: str | None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then sqlite:///mlflow.db made absolute (Ray actors and
    jobs run in other folders, where a relative path would point elsewhere)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingError(f"tracking URI {uri}: folder {folder} does not exist")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"tracking URI {uri} is unreachable: {getattr(exc, 'reason', exc)}") from None
    elif "://" in uri and not uri.startswith(("file://", "postgresql", "mysql", "databricks")):
        raise TrackingError(f"tracking URI {uri}: unsupported scheme")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_run(run_id: str, tracking_uri: str | None = None) -> tuple["Tracker", object]:
    """A run by id from the resolved store, or a TrackingError naming both."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    tracker = Tracker(uri)
    try:
        return tracker, tracker.run(run_id)
    except Exception:
        raise TrackingError(f"no run {run_id} in {uri}") from None


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, by absolute path
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    # ---- runs --------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, kind: str, name: str, parent_id: str | None = None,
                   params: dict | None = None, tags: dict | None = None, start_time: float | None = None) -> str:
        all_tags = {KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(
            experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()},
            start_time=int((start_time or time.time()) * 1000),
        )
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log(self, run_id: str, params: dict | None = None, metrics: dict[str, float] | None = None, step: int = 0,
            timestamp_ms: int | None = None) -> None:
        """Params and metrics in as few store transactions as MLflow's batch limits allow. A fixed
        timestamp_ms makes a retried write identical to the first, which MLflow then stores once."""
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(params or {}).items()]
        ts = timestamp_ms or int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        while params or metrics:  # MLflow takes at most 100 params and 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[:1000], params=params[:100])
            params, metrics = params[100:], metrics[1000:]

    def log_params(self, run_id: str, params: dict) -> None:
        self.log(run_id, params=params)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log(run_id, metrics=metrics, step=step)

    def log_series(self, run_id: str, rows: Iterable[dict], keys: Iterable[str], timestamp_ms: int | None = None) -> None:
        """Per-step metrics (train loss, sampled rank, ...), one MLflow step per row."""
        now = timestamp_ms or int(time.time() * 1000)
        items = [Metric(k, float(row[k]), now, int(row["step"])) for row in rows for k in keys if k in row]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def set_tags(self, run_id: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, end_time: float | None = None) -> None:
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED),
                                   end_time=int((end_time or time.time()) * 1000))

    def fail(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

    def terminate(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    # ---- reading back ------------------------------------------------------------------------------
    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def children(self, parent_id: str, kind: str | None = None) -> list:
        parent = self.client.get_run(parent_id)
        query = f"tags.`{PARENT_TAG}` = '{parent_id}'"
        if kind:
            query += f" and tags.`{KIND_TAG}` = '{kind}'"
        return self.client.search_runs([parent.info.experiment_id], query, run_view_type=ViewType.ALL, max_results=10_000)

    def find_by_tag(self, experiment_id: str, key: str, value: str) -> str | None:
        """The id of the run tagged key=value, if one exists (how a retried create finds its first try)."""
        found = self.client.search_runs([experiment_id], f"tags.`{key}` = '{value}'", run_view_type=ViewType.ALL, max_results=1)
        return found[0].info.run_id if found else None

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))
