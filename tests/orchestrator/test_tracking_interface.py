"""Both trackers implement the whole Tracker protocol explicitly, and neither hands out the MLflow client
(a write around the buffer would reach the store out of order)."""

from __future__ import annotations

import inspect

import pytest

from orchestrator.buffered_tracking import BufferedTracker
from orchestrator.tracking import MlflowTracker, Tracker

PROTOCOL_METHODS = sorted(name for name, value in vars(Tracker).items()
                          if callable(value) and not name.startswith("_"))
EXPECTED = ["children", "create_run", "download", "experiment_id", "fail", "find_by_tag", "finish", "log", "log_artifact",
            "log_dict", "log_inputs", "log_metrics", "log_params", "log_series", "log_text", "metric_history",
            "register_model", "reopen", "run", "set_tags", "terminate"]


def test_the_protocol_lists_every_operation_callers_need():
    assert PROTOCOL_METHODS == EXPECTED
    assert "uri" in Tracker.__annotations__


@pytest.mark.parametrize("cls", [MlflowTracker, BufferedTracker])
@pytest.mark.parametrize("name", EXPECTED)
def test_each_tracker_defines_each_method_itself_with_the_protocols_parameters(cls, name):
    assert name in vars(cls), f"{cls.__name__}.{name} must be written out, not inherited or forwarded"
    wanted = inspect.signature(getattr(Tracker, name)).parameters
    got = inspect.signature(vars(cls)[name]).parameters
    assert list(got)[:len(wanted)] == list(wanted), f"{cls.__name__}.{name}{inspect.signature(vars(cls)[name])}"
    for pname, param in wanted.items():
        assert got[pname].kind == param.kind and got[pname].default == param.default, f"{cls.__name__}.{name}: {pname}"
    extra = list(got.values())[len(wanted):]  # e.g. MlflowTracker.log's timestamp_ms, for idempotent retries
    assert all(p.default is not inspect.Parameter.empty for p in extra), f"{cls.__name__}.{name}: extra must be optional"


@pytest.mark.parametrize("cls", [MlflowTracker, BufferedTracker])
def test_no_forwarding_and_no_client_escape_hatch(cls):
    assert not hasattr(cls, "__getattr__")
    assert "client" not in dir(cls)


def test_instances_have_the_uri_and_no_public_client(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    buffered = BufferedTracker(tracker, max_outage_seconds=1)
    try:
        for t in (tracker, buffered):
            assert isinstance(t, Tracker) and t.uri == tracker.uri
            assert not hasattr(t, "client")
        with pytest.raises(AttributeError):
            buffered.get_metric_history  # noqa: B018 - nothing is forwarded to MLflow by name
    finally:
        buffered.close()
