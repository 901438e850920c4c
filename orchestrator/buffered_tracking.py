"""The driver's MLflow writes, buffered and retried, so a tracking server that goes away for a while
(restart, network blip, database failover) neither stops the pipeline nor loses a result.

Writes go into an ordered buffer that one writer thread drains; the pipeline never waits on the store.
A transient failure (connection refused, timeout, HTTP 429/5xx, a database server that cannot be reached,
a locked sqlite) is retried with bounded backoff; a store that stays away longer than
`tracking.max_outage_seconds` ends the pipeline with one line naming the URI (password masked), instead
of hanging. Closing waits no longer than that window either (a call stuck in a dead TCP connection
included), and Ctrl-C ends the wait at once. Every write is made idempotent before it is queued:
timestamps are fixed at enqueue (MLflow stores an identical metric once), and a run is created with a
unique `dyrank.record_id` tag that a retry looks up first, because a create whose reply was lost may
have reached the store. Until the writer has created a run, the pipeline holds a `pending-...` handle
for it; later writes name the handle and the writer puts the real id in.

Reads, and the two calls whose outcome the caller needs (experiment_id, reopen), run in the caller's
thread after a flush, with the same retries, so reads always see every earlier write.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from mlflow.exceptions import MlflowException

from orchestrator.errors import TrackingError
from orchestrator.redact import redact
from orchestrator.tags import RECORD_TAG
from orchestrator.tracking import MlflowTracker
from orchestrator.tracking_uri import is_remote_db, is_remote_http

__all__ = ["PENDING", "RECORD_TAG", "BufferedTracker", "is_transient"]
PENDING = "pending-"
_log = logging.getLogger("dyrank.tracking")


def is_transient(exc: BaseException, remote: bool = True) -> bool:
    """Failures a later try can cure. Anything else (a bad value, a permission) is raised at once.
    remote: the store is a server (http, or a PostgreSQL/MySQL database) that can go away and come back.
    A local store's internal errors are bugs or a full disk, not outages: only a locked sqlite waits."""
    if isinstance(exc, MlflowException) and remote:
        # MLflow's SQL store wraps sqlalchemy's OperationalError (connection lost) as TEMPORARILY_UNAVAILABLE: 503
        return exc.get_http_status_code() in (429, 500, 502, 503, 504)
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and exc.response.status_code in (429, 500, 502, 503, 504)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if _is_sqlalchemy_error(exc, "OperationalError", "InterfaceError") and remote:
        return True  # a database server unreachable, restarting or failing over: connection errors
    if _is_sqlalchemy_error(exc, "DBAPIError") and remote and getattr(exc, "connection_invalidated", False):
        return True
    return type(exc).__name__ == "OperationalError" and "locked" in str(exc)  # sqlite busy


def _is_sqlalchemy_error(exc: BaseException, *names: str) -> bool:
    return any(c.__module__.startswith("sqlalchemy") and c.__name__ in names for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc).strip())  # a driver's error may quote the connection URL
    return text.splitlines()[0][:300] if text else type(exc).__name__


class BufferedTracker:
    """The Tracker interface in front of an MlflowTracker, for the pipeline and study drivers.

    Buffered (queued, in order, returning at once): create_run, log, log_params, log_metrics, log_series,
    set_tags, log_artifact, log_text, log_dict, log_inputs, register_model, finish, fail, terminate. Synchronous, after a flush and
    with the same retries: the reads, experiment_id (its id is needed now) and reopen (a caller falls
    back to a new run when the old one is gone, so it must hear the refusal)."""

    def __init__(self, tracker: MlflowTracker, max_outage_seconds: float, backoff_cap: float = 5.0):
        self._tracker, self.uri = tracker, tracker.uri
        self.shown = redact(tracker.uri)  # what messages and logs name: never the password
        self.max_outage, self.backoff_cap = max_outage_seconds, backoff_cap
        self.remote = is_remote_http(tracker.uri) or is_remote_db(tracker.uri)
        if self.remote:
            # MLflow's own HTTP retries back off for minutes per call, past any outage limit: retry here instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        self._ops: deque[tuple[str, tuple, dict]] = deque()
        self._ids: dict[str, str] = {}  # pending handle -> run id
        self._error: TrackingError | None = None
        self._closed = False
        self._cv = threading.Condition()
        self._writer = threading.Thread(target=self._drain, name="dyrank-mlflow-writer", daemon=True)
        self._writer.start()

    def experiment_id(self, name: str) -> str:
        return self._now("experiment_id", lambda: self._tracker.experiment_id(name))

    # ---- the buffered writes ----------------------------------------------------------------------
    def create_run(self, experiment_id: str, kind: str, name: str, parent_id: str | None = None,
                   params: dict | None = None, tags: dict | None = None, start_time: float | None = None) -> str:
        record_id = uuid.uuid4().hex
        handle = PENDING + record_id
        self._put("_create", handle, experiment_id, kind, name, parent_id, {**(tags or {}), RECORD_TAG: record_id},
                  start_time or time.time())
        if params:  # separately: a retried create finds the run and skips straight to its params
            self._put("log", handle, params, timestamp_ms=_now_ms())
        return handle

    def log(self, run_id: str, params: dict | None = None, metrics: dict | None = None, step: int = 0) -> None:
        self._put("log", run_id, params, metrics, step, timestamp_ms=_now_ms())

    def log_params(self, run_id: str, params: dict) -> None:
        self.log(run_id, params=params)

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        self.log(run_id, metrics=metrics, step=step)

    def log_series(self, run_id: str, rows: Iterable[dict], keys: Iterable[str]) -> None:
        self._put("log_series", run_id, list(rows), list(keys), timestamp_ms=_now_ms())

    def set_tags(self, run_id: str, tags: dict) -> None:
        self._put("set_tags", run_id, dict(tags))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("log_artifact", run_id, path, artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._put("log_text", run_id, text, artifact_file)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self._put("log_dict", run_id, copy.deepcopy(obj), artifact_file)  # as it is now, not when written

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        self._put("log_inputs", run_id, copy.deepcopy(datasets))

    def register_model(self, run_id: str, model_dir: str | Path, artifact_path: str, name: str, alias: str,
                       tags: dict) -> None:
        self._put("register_model", run_id, model_dir, artifact_path, name, alias, dict(tags))

    def finish(self, run_id: str, end_time: float | None = None) -> None:
        self._put("finish", run_id, end_time or time.time())

    def fail(self, run_id: str, reason: str) -> None:
        self._put("fail", run_id, reason)

    def terminate(self, run_id: str, status: str) -> None:
        self._put("terminate", run_id, status)

    def reopen(self, run_id: str) -> None:
        self._now("reopen", lambda: self._tracker.reopen(self.resolve(run_id)))

    # ---- reads: every earlier write first ----------------------------------------------------------
    def run(self, run_id: str):
        return self._now("run", lambda: self._tracker.run(self.resolve(run_id)))

    def children(self, parent_id: str, kind: str | None = None) -> list:
        return self._now("children", lambda: self._tracker.children(self.resolve(parent_id), kind))

    def find_by_tag(self, experiment_id: str, key: str, value: str) -> str | None:
        return self._now("find_by_tag", lambda: self._tracker.find_by_tag(experiment_id, key, value))

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        return self._now("download", lambda: self._tracker.download(self.resolve(run_id), artifact_path, dst))

    def metric_history(self, run_id: str, key: str) -> list:
        return self._now("metric_history", lambda: self._tracker.metric_history(self.resolve(run_id), key))

    # ---- flushing ----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every buffered write is in the store; a TrackingError if the store stayed away, or
        if `timeout` seconds pass first (the writer may be stuck in a call that never returns).
        The wait is in short slices, so Ctrl-C (KeyboardInterrupt in this thread) ends it at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._ops and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._error = TrackingError(
                        f"MLflow at {self.shown}: {len(self._ops)} writes still unrecorded after waiting {timeout:g} s "
                        "(tracking.max_outage_seconds); recorded work is kept: `dyrank resume PARENT_RUN_ID` "
                        "finishes the rest once it is back")
                    break
                self._cv.wait(0.5 if left is None else min(0.5, left))
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Flush, waiting at most the outage window (plus one backoff): closing never hangs on a dead store."""
        flushed = False
        try:
            self.flush(timeout=self.max_outage + self.backoff_cap + 1.0)
            flushed = True
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            if flushed:  # otherwise the writer may be stuck in a call: it is a daemon, leave it
                self._writer.join(timeout=5)

    def resolve(self, run_id: str) -> str:
        """The real run id behind a pending handle (after a flush), or the id itself."""
        return self._ids.get(run_id, run_id)

    def _now(self, what: str, call: Callable[[], Any]) -> Any:
        """A call whose outcome the caller needs: after every buffered write, in the caller's thread."""
        self.flush()
        return self._retrying(call, what)

    # ---- the writer --------------------------------------------------------------------------------
    def _put(self, op: str, *args, **kwargs) -> None:
        with self._cv:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise TrackingError(f"tracking for {self.shown} is closed; {op} was not recorded")
            self._ops.append((op, args, kwargs))
            self._cv.notify_all()

    def _drain(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._closed:
                    self._cv.wait()
                if not self._ops:
                    return
                op, args, kwargs = self._ops[0]  # stays queued (flush waits) until written
            try:
                run_id = self.resolve(args[0])
                if op == "_create":
                    self._ids[args[0]] = self._create(*args[1:])
                else:
                    self._retrying(lambda: getattr(self._tracker, op)(run_id, *args[1:], **kwargs), op)
            except TrackingError as exc:
                with self._cv:
                    self._error = exc
                    self._ops.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._ops.popleft()
                self._cv.notify_all()

    def _create(self, experiment_id: str, kind: str, name: str, parent_id: str | None, tags: dict, start_time: float) -> str:
        tries = []

        def attempt() -> str:
            if tries:  # an earlier try may have reached the store before its reply was lost
                found = self._tracker.find_by_tag(experiment_id, RECORD_TAG, tags[RECORD_TAG])
                if found:
                    return found
            tries.append(1)
            return self._tracker.create_run(experiment_id, kind, name, self.resolve(parent_id) if parent_id else None,
                                           None, tags, start_time)
        return self._retrying(attempt, f"create run {name}")

    def _retrying(self, call: Callable[[], Any], what: str) -> Any:
        """call() until it succeeds; transient failures are retried with backoff (0.5 s doubling to
        backoff_cap) for up to max_outage seconds, then one TrackingError names the URI and the limit."""
        down_since, delay = None, 0.5
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_transient(exc, self.remote):
                    raise TrackingError(f"MLflow at {self.shown} refused {what}: {_first_line(exc)}") from None
                now = time.time()
                if down_since is None:
                    down_since = now
                    _log.warning("MLflow at %s is unreachable (%s); buffering writes and retrying for up to %.0f s",
                                 self.shown, _first_line(exc), self.max_outage)
                if now - down_since > self.max_outage:
                    raise TrackingError(
                        f"MLflow at {self.shown} unreachable for {now - down_since:.0f} s, longer than "
                        f"tracking.max_outage_seconds ({self.max_outage:g}); last error: {_first_line(exc)}. "
                        "Recorded work is kept: `dyrank resume PARENT_RUN_ID` finishes the rest once it is back"
                    ) from None
                time.sleep(min(delay, self.backoff_cap, max(0.05, down_since + self.max_outage - now + 0.05)))
                delay *= 2
                continue
            if down_since is not None:
                _log.warning("MLflow at %s is back after %.0f s; writing the buffered records", self.shown, time.time() - down_since)
            return result


def _now_ms() -> int:
    return int(time.time() * 1000)
