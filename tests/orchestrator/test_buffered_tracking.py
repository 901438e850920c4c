"""The driver's buffered MLflow writes: retried through transient failures, each run created once, an
outage past the limit ends in one clear error. Against a real sqlite store with injected failures."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from orchestrator.buffered_tracking import PENDING, RECORD_TAG, BufferedTracker, is_transient
from orchestrator.errors import TrackingError
from orchestrator.tracking import MlflowTracker


class Flaky:
    """Wraps a method of MlflowTracker's private MLflow client (the one place faults can be injected): the first `failures` calls raise a connection error, optionally after the
    call went through (the reply lost on the way back, the case that duplicates runs)."""

    def __init__(self, method, failures: int, after_call: bool = False):
        self.method, self.failures, self.after_call, self.calls = method, failures, after_call, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            if self.after_call:
                self.method(*args, **kwargs)
            raise requests.ConnectionError("Connection refused")
        return self.method(*args, **kwargs)


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('buffered')}/mlflow.db"
    MlflowTracker(uri).experiment_id("schema")  # creates the tables once (seconds), not per test
    return uri


@pytest.fixture
def store(database, request):
    tracker = MlflowTracker(database)  # a fresh client per test: tests patch its methods
    return tracker, tracker.experiment_id(request.node.name)


def test_lost_create_reply_and_failed_writes_are_retried_into_one_complete_run(store):
    tracker, experiment = store
    client = tracker._client
    client.create_run = Flaky(client.create_run, failures=2, after_call=True)
    client.log_batch = Flaky(client.log_batch, failures=3, after_call=True)
    buffered = BufferedTracker(tracker, max_outage_seconds=30, backoff_cap=0.05)
    handle = buffered.create_run(experiment, "eval", "rank-3", params={"rank": 3})
    assert handle.startswith(PENDING)  # the driver did not wait for the store
    buffered.log_series(handle, [{"step": s, "train_loss": 1.0 / (s + 1)} for s in range(5)], ["train_loss"])
    buffered.log_metrics(handle, {"eval_loss": 0.5})
    buffered.finish(handle)
    buffered.close()

    runs = client.search_runs([experiment])
    assert len(runs) == 1, "a create whose reply was lost must not leave a second run"
    run = runs[0]
    assert run.info.run_id == buffered.resolve(handle) and run.info.status == "FINISHED"
    assert run.data.params["rank"] == "3" and run.data.tags[RECORD_TAG] == handle.removeprefix(PENDING)
    history = tracker.metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4], "a retried batch must be stored once"
    assert len(tracker.metric_history(run.info.run_id, "eval_loss")) == 1
    assert client.create_run.calls == 1, "the retry found the first try's run instead of creating again"
    assert client.log_batch.calls > 3, "the faults were injected"


def test_reads_see_every_buffered_write_and_accept_pending_handles(store):
    tracker, experiment = store
    buffered = BufferedTracker(tracker, max_outage_seconds=30)
    handle = buffered.create_run(experiment, "train", "train")
    buffered.set_tags(handle, {"dyrank.node_id": "n1"})
    assert buffered.run(handle).data.tags["dyrank.node_id"] == "n1"
    buffered.close()


def test_an_outage_longer_than_the_limit_fails_clearly_without_hanging():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    buffered = BufferedTracker(MlflowTracker(f"http://127.0.0.1:{port}"), max_outage_seconds=1.5, backoff_cap=0.2)
    started = time.time()
    handle = buffered.create_run("0", "eval", "rank-1")
    buffered.log_metrics(handle, {"eval_loss": 1.0})
    with pytest.raises(TrackingError, match=rf"127.0.0.1:{port} unreachable for \d+ s.*max_outage_seconds \(1.5\)"):
        buffered.close()
    assert time.time() - started < 10
    with pytest.raises(TrackingError):  # and later writes do not pretend to succeed
        buffered.log_metrics(handle, {"eval_loss": 2.0})


def test_a_refused_write_is_not_retried(store):
    tracker, experiment = store
    buffered = BufferedTracker(tracker, max_outage_seconds=30)
    handle = buffered.create_run(experiment, "eval", "r", params={"rank": 1})
    buffered.log_params(handle, {"rank": 2})  # MLflow refuses to change a param
    started = time.time()
    with pytest.raises(TrackingError, match="refused log"):
        buffered.flush()
    assert time.time() - started < 5


def test_transient_failures_are_told_apart_from_bad_requests():
    assert is_transient(MlflowException("API request to x failed with exception refused"))
    assert not is_transient(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(MlflowException("internal"), remote=False)  # a local store's bug is not an outage
    assert not is_transient(ValueError("x"))


def test_the_study_driver_calls_are_buffered_or_see_earlier_writes(store, tmp_path):
    """log_dict and terminate queue like the other writes; reopen and metric_history wait for them."""
    tracker, experiment = store
    buffered = BufferedTracker(tracker, max_outage_seconds=30)
    handle = buffered.create_run(experiment, "study", "s")
    buffered.log_dict(handle, {"front": [1, 2]}, "best_trials.json")
    buffered.log_metrics(handle, {"best_value": 0.5})
    buffered.terminate(handle, "KILLED")
    assert buffered.run(handle).info.status == "KILLED"
    buffered.reopen(handle)
    assert buffered.run(handle).info.status == "RUNNING"
    assert [m.value for m in buffered.metric_history(handle, "best_value")] == [0.5]
    path = buffered.download(handle, "best_trials.json", tmp_path)
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"front":[1,2]}'
    buffered.close()


def test_reopening_a_missing_run_is_refused_at_once(store):
    tracker, _ = store
    buffered = BufferedTracker(tracker, max_outage_seconds=30)
    with pytest.raises(TrackingError, match="refused reopen"):
        buffered.reopen("0" * 32)
    buffered.close()
