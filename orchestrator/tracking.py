"""MLflow, written by the driver alone: actors return results, this module records them.

With the embedded sqlite store only one process may write ("database is locked" otherwise), so every
run, metric and artifact goes through here. Child runs are created with `mlflow.parentRunId` set
explicitly (never through MLFLOW_RUN_ID, which would make every worker write into one run).

`Tracker` is the interface every caller writes and reads through; `MlflowTracker` talks to the store,
`BufferedTracker` (buffered_tracking.py) buffers and retries in front of one. Neither hands out the
MLflow client: a write that bypassed the buffer would reach the store out of order.
"""

from __future__ import annotations

import base64
import socket
import re
import time
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from orchestrator.errors import TrackingError
from orchestrator.redact import redact, redact_tree
from orchestrator.tags import FAILURE_TAG, KIND_TAG, PARENT_TAG, REGISTERED_MODEL_TAG
from orchestrator.tracking_uri import DRIVER_SCHEMES, is_remote_http, parse_tracking_uri, resolve_tracking_uri, sqlite_path

__all__ = ["FAILURE_TAG", "KIND_TAG", "PARENT_TAG", "MlflowTracker", "Tracker", "check_reachable", "open_run",
           "resolve_tracking_uri"]


@runtime_checkable
class Tracker(Protocol):
    """Every tracking operation dyrank needs. Run ids may be a BufferedTracker's pending handles."""

    uri: str

    def experiment_id(self, name: str) -> str: ...

    # ---- writes ------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, kind: str, name: str, parent_id: str | None = None,
                   params: dict | None = None, tags: dict | None = None, start_time: float | None = None) -> str: ...

    def log(self, run_id: str, params: dict | None = None, metrics: dict[str, float] | None = None,
            step: int = 0) -> None: ...

    def log_params(self, run_id: str, params: dict) -> None: ...

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None: ...

    def log_series(self, run_id: str, rows: Iterable[dict], keys: Iterable[str]) -> None: ...

    def set_tags(self, run_id: str, tags: dict) -> None: ...

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None: ...

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        """Data sets as MLflow run inputs; each {"name", "digest", "source_type", "source", "context", "profile"}."""

    def register_model(self, run_id: str, model_dir: str | Path, artifact_path: str, name: str, alias: str,
                       tags: dict) -> None:
        """Log an MLflow model folder under the run and register it as a version of `name` with `alias` and
        `tags` (once: a retry or a resume finds the version it made)."""

    def finish(self, run_id: str, end_time: float | None = None) -> None: ...

    def fail(self, run_id: str, reason: str) -> None: ...

    def terminate(self, run_id: str, status: str) -> None:
        """End a run with an MLflow status, e.g. KILLED."""

    def reopen(self, run_id: str) -> None:
        """Set an ended run back to RUNNING (a resumed pipeline, a resumed study)."""

    # ---- reads -------------------------------------------------------------------------------------
    def run(self, run_id: str) -> Any: ...

    def children(self, parent_id: str, kind: str | None = None) -> list: ...

    def find_by_tag(self, experiment_id: str, key: str, value: str) -> str | None: ...

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path: ...

    def metric_history(self, run_id: str, key: str) -> list: ...


RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the store (password masked), where MLflow would retry for minutes."""
    try:
        parsed = parse_tracking_uri(uri)
    except ValueError as exc:
        raise TrackingError(redact(str(exc))) from None
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise TrackingError(f"tracking URI {uri}: folder {db.parent} does not exist")
    parts = urlsplit(uri)
    if is_remote_http(uri):
        # urllib refuses user:password@ in a URL: send them as a Basic auth header (as MLflow does) instead.
        bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        request = urllib.request.Request(bare.rstrip("/") + "/health")
        if parts.username is not None:
            token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            urllib.request.urlopen(request, timeout=timeout)
        except (urllib.error.URLError, OSError) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise TrackingError(f"tracking URI {redact(uri)} is unreachable: {reason}") from None
        _check_login(uri, bare, parts, timeout)
    elif parsed.scheme in DRIVER_SCHEMES and parts.hostname:  # a database server: can we open a connection?
        port = parts.port or {"postgresql": 5432, "mysql": 3306}[parsed.scheme]
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
        except OSError as exc:
            raise TrackingError(f"tracking URI {redact(uri)} is unreachable: {exc}") from None


def _check_login(uri: str, bare: str, parts, timeout: float) -> None:
    """/health answers anyone, so a missing or wrong login would only surface at the first write, from an actor.
    One read-only API call with the credentials MLflow itself would send (user:password in the URI, else
    MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN) shows whether the server takes them."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    creds = get_default_host_creds(bare)
    if parts.username is not None:
        creds = MlflowHostCreds(bare, username=unquote(parts.username), password=unquote(parts.password or ""))
    try:
        reply = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=timeout,
                             raise_on_status=False, params={"max_results": 1})
    except Exception as exc:  # noqa: BLE001 - requests' and MLflow's connection errors alike
        raise TrackingError(f"tracking URI {redact(uri)} is unreachable: {redact(str(exc).splitlines()[0])}") from None
    if reply.status_code in (401, 403):
        who = f"user {creds.username!r}" if creds.username else "a token" if creds.token else "anonymous requests"
        raise TrackingError(f"tracking URI {redact(uri)} refused {who} (HTTP {reply.status_code}): set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a login the server accepts")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_run(run_id: str, tracking_uri: str | None = None) -> tuple[MlflowTracker, object]:
    """A run by id from the resolved store, or a TrackingError naming both. A sqlite store that does not exist
    holds no run: it is not opened, since opening would create an empty ./mlflow.db."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no run {run_id}: there is no MLflow store at {db} (pass --tracking-uri or set "
                            "MLFLOW_TRACKING_URI)")
    tracker = MlflowTracker(uri)
    try:
        return tracker, tracker.run(run_id)
    except Exception:
        raise TrackingError(f"no run {run_id} in {redact(uri)}") from None


class MlflowTracker:
    """The Tracker that talks to an MLflow store, synchronously."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location, db = None, sqlite_path(self.uri)
        if db is not None:  # artifacts beside the database, by absolute path
            location = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return self._client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Two drivers of one study (or two runs) starting together: the other one created it first.
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # ---- writes ------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, kind: str, name: str, parent_id: str | None = None,
                   params: dict | None = None, tags: dict | None = None, start_time: float | None = None) -> str:
        all_tags = {KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self._client.create_run(
            experiment_id, run_name=name, tags={k: redact(str(v)) for k, v in all_tags.items()},
            start_time=int((start_time or time.time()) * 1000),
        )
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log(self, run_id: str, params: dict | None = None, metrics: dict[str, float] | None = None, step: int = 0,
            timestamp_ms: int | None = None) -> None:
        """Params and metrics in as few store transactions as MLflow's batch limits allow. A fixed
        timestamp_ms makes a retried write identical to the first, which MLflow then stores once."""
        params = [Param(k, redact(str(v))[:6000]) for k, v in _flatten(params or {}).items()]  # no credentials
        ts = timestamp_ms or int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        while params or metrics:  # MLflow takes at most 100 params and 1000 metrics per batch
            self._client.log_batch(run_id, metrics=metrics[:1000], params=params[:100])
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
            self._client.log_batch(run_id, metrics=items[start:start + 1000])

    def set_tags(self, run_id: str, tags: dict) -> None:
        for key, value in tags.items():
            self._client.set_tag(run_id, key, redact(str(value)))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._client.log_text(run_id, redact(text), artifact_file)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self._client.log_dict(run_id, redact_tree(obj), artifact_file)

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                                       source=d["source"], profile=d.get("profile")),
                               [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])]) for d in datasets]
        self._client.log_inputs(run_id, datasets=inputs)

    def register_model(self, run_id: str, model_dir: str | Path, artifact_path: str, name: str, alias: str,
                       tags: dict) -> None:
        source = f"{self._client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        self._client.log_artifacts(run_id, str(model_dir), artifact_path)
        if not self._client.search_registered_models(f"name = '{name}'"):
            self._client.create_registered_model(name)
        made = [v for v in self._client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if v.source == source]
        version = made[0] if made else self._client.create_model_version(
            name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
        self._client.set_registered_model_alias(name, alias, version.version)
        self._client.set_tag(run_id, REGISTERED_MODEL_TAG, f"{name}/{version.version}")

    def finish(self, run_id: str, end_time: float | None = None) -> None:
        self._client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED),
                                    end_time=int((end_time or time.time()) * 1000))

    def fail(self, run_id: str, reason: str) -> None:
        self._client.set_tag(run_id, FAILURE_TAG, redact(reason)[:5000])
        self._client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

    def terminate(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status)

    def reopen(self, run_id: str) -> None:
        self._client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    # ---- reads -------------------------------------------------------------------------------------
    def run(self, run_id: str):
        return self._client.get_run(run_id)

    def children(self, parent_id: str, kind: str | None = None) -> list:
        parent = self._client.get_run(parent_id)
        query = f"tags.`{PARENT_TAG}` = '{parent_id}'"
        if kind:
            query += f" and tags.`{KIND_TAG}` = '{kind}'"
        return self._client.search_runs([parent.info.experiment_id], query, run_view_type=ViewType.ALL, max_results=10_000)

    def find_by_tag(self, experiment_id: str, key: str, value: str) -> str | None:
        """The id of the run tagged key=value, if one exists (how a retried create finds its first try)."""
        found = self._client.search_runs([experiment_id], f"tags.`{key}` = '{value}'", run_view_type=ViewType.ALL, max_results=1)
        return found[0].info.run_id if found else None

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        return Path(self._client.download_artifacts(run_id, artifact_path, str(dst)))

    def metric_history(self, run_id: str, key: str) -> list:
        return self._client.get_metric_history(run_id, key)
