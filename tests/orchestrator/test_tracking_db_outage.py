"""A direct PostgreSQL/MySQL store gets the same bounded buffering as an http one; closing never waits past
the outage window; Ctrl-C ends the wait; the password never reaches a message. Faults are injected into a
real sqlite store's client, the tracker told it talks to a database server."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from orchestrator.buffered_tracking import BufferedTracker, is_transient
from orchestrator.errors import TrackingError
from orchestrator.tracking import MlflowTracker

DB_URI = "postgresql://alice:s3cret-pw@db.example:5432/mlflow"


def _connection_refused():
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception('connection to server at "db.example" failed: '
                                                                    "Connection refused"))


@pytest.fixture
def store(tmp_path, request):
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = tracker.experiment_id(request.node.name)
    tracker.uri = DB_URI  # what the driver would be talking to
    return tracker, experiment


class Down:
    """The client method fails like a database server that is down, `failures` times (None: forever)."""

    def __init__(self, method, failures, error):
        self.method, self.failures, self.error, self.calls = method, failures, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise self.error()
        return self.method(*args, **kwargs)


def test_database_connection_errors_are_transient_only_for_a_database_server():
    wrapped = MlflowException(message="(psycopg2.OperationalError) connection refused", error_code=TEMPORARILY_UNAVAILABLE)
    assert is_transient(_connection_refused(), remote=True)
    assert is_transient(wrapped, remote=True)
    assert not is_transient(_connection_refused(), remote=False), "a local sqlite store's errors are not outages"
    assert not is_transient(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), remote=True)


@pytest.mark.parametrize("error", [_connection_refused, lambda: MlflowException(
    message="(psycopg2.OperationalError) server closed the connection", error_code=TEMPORARILY_UNAVAILABLE)])
def test_a_database_outage_is_buffered_and_retried_into_complete_records(store, error):
    tracker, experiment = store
    client = tracker._client
    client.log_batch = Down(client.log_batch, failures=4, error=error)
    buffered = BufferedTracker(tracker, max_outage_seconds=30, backoff_cap=0.05)
    handle = buffered.create_run(experiment, "eval", "rank-2", params={"rank": 2})
    buffered.log_metrics(handle, {"eval_loss": 0.25})
    buffered.finish(handle)
    buffered.close()
    run = client.get_run(buffered.resolve(handle))
    assert run.data.params["rank"] == "2" and run.data.metrics["eval_loss"] == 0.25 and run.info.status == "FINISHED"
    assert client.log_batch.calls > 4, "the outage was injected"


def test_a_long_database_outage_fails_in_the_window_naming_the_store_without_its_password(store):
    tracker, experiment = store
    client = tracker._client
    client.log_batch = Down(client.log_batch, None, _connection_refused)
    buffered = BufferedTracker(tracker, max_outage_seconds=1.0, backoff_cap=0.1)
    handle = buffered.create_run(experiment, "eval", "rank-1")
    buffered.log_metrics(handle, {"eval_loss": 1.0})
    started = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        buffered.close()
    assert time.monotonic() - started < 5
    assert "postgresql://alice:***@db.example" in str(raised.value) and "s3cret" not in str(raised.value)


def test_closing_never_waits_past_the_window_even_when_a_call_hangs(store):
    tracker, experiment = store
    release = threading.Event()
    tracker._client.log_batch = lambda *a, **k: release.wait(60)  # a TCP connection to a host that went silent
    buffered = BufferedTracker(tracker, max_outage_seconds=1.0, backoff_cap=0.1)
    handle = buffered.create_run(experiment, "eval", "rank-1")
    buffered.log_metrics(handle, {"eval_loss": 1.0})
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"writes still unrecorded after waiting .*alice:\*\*\*@|alice:\*\*\*@.*writes still unrecorded"):
        buffered.close()
    assert time.monotonic() - started < 4, "closing waited past max_outage_seconds + one backoff"
    release.set()


def test_ctrl_c_ends_the_wait_for_a_dead_store(store):
    tracker, experiment = store
    tracker._client.log_batch = Down(tracker._client.log_batch, None, _connection_refused)
    buffered = BufferedTracker(tracker, max_outage_seconds=120, backoff_cap=0.2)
    handle = buffered.create_run(experiment, "eval", "rank-1")
    buffered.log_metrics(handle, {"eval_loss": 1.0})
    timer = threading.Timer(0.5, _thread.interrupt_main)  # what Ctrl-C does to the main thread
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        buffered.close()
    assert time.monotonic() - started < 3, "Ctrl-C must end the wait, not the 120 s window"
    with pytest.raises(TrackingError, match="closed"):
        buffered.log_metrics(handle, {"eval_loss": 2.0})
