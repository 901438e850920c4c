"""`dyrank run`'s live progress: training rows from the step sinks become step/total, loss and ETA; the sweep
counts ranks; --quiet silences the screen, --log-file keeps it; bars only on a terminal."""

from __future__ import annotations

import io
import time

import pytest
import ray
from ray import cloudpickle

from orchestrator.cli_jobs import PIPELINE_EVENTS
from orchestrator.run_progress import RunProgress, TeeSink


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _drive(progress: RunProgress) -> None:
    sinks = {job: progress.sink(job, 4) for job in ("qdylora", "qlora-r2")}
    for step in range(1, 5):
        for job, sink in sinks.items():
            assert sink({"step": step, "train_loss": 6.0 - step / 10, "rank": 2, "step_seconds": 0.01}) is False
    progress.on_event("started", {"parent_run_id": "abc", "tracking_uri": "sqlite:///x.db"})
    progress.on_event("trained", {"device_seconds": 1.5, "steps": 4})
    for rank in (1, 2):
        progress.on_event("eval", {"rank": rank, "eval_loss": 5.0})
    progress.close()


def test_plain_progress_lines_where_stderr_is_not_a_terminal(local_ray, tmp_path):
    err, out, log = io.StringIO(), io.StringIO(), tmp_path / "run.log"
    _drive(RunProgress(2, PIPELINE_EVENTS, stream=err, out=out, log_file=log, interval=0.05))
    assert "train qdylora: step 4/4, loss 5.6000, rank 2, ETA 00:00" in err.getvalue()
    assert "train qlora-r2: step 4/4" in err.getvalue()
    assert err.getvalue().rstrip().endswith("sweep: 2/2 ranks scored")
    assert out.getvalue().splitlines() == ["pipeline run abc  (MLflow: sqlite:///x.db)",
                                           "QDyLoRA trained in 1.5 s; sweeping ranks...",
                                           "  rank   1: eval_loss 5.0000", "  rank   2: eval_loss 5.0000"]
    logged = log.read_text()
    assert "train qdylora: step 4/4" in logged and "rank   2: eval_loss" in logged and "sweep: 2/2" in logged


def test_quiet_prints_nothing_but_still_logs(local_ray, tmp_path):
    err, out, log = io.StringIO(), io.StringIO(), tmp_path / "run.log"
    _drive(RunProgress(2, PIPELINE_EVENTS, stream=err, out=out, log_file=log, quiet=True, interval=0.05))
    assert err.getvalue() == "" and out.getvalue() == ""
    assert "train qlora-r2: step 4/4" in log.read_text()


def test_tee_sink_travels_to_actors_and_any_sink_stops():
    class Stop:
        def __call__(self, row):
            return row["step"] == 3

    tee = cloudpickle.loads(cloudpickle.dumps(TeeSink(None, Stop(), lambda row: False)))  # as Ray ships it
    assert [tee({"step": s}) for s in (1, 2, 3)] == [False, False, True]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_on_a_terminal_keep_their_own_time_once_finished(local_ray, tmp_path):
    err, out = _Terminal(), io.StringIO()
    progress = RunProgress(2, PIPELINE_EVENTS, stream=err, out=out, interval=0.05)
    _drive(progress)
    screen = err.getvalue()
    assert "train qdylora" in screen and "4/4" in screen and "loss 5.6000, rank 2" in screen
    assert "sweep ranks" in screen and "2/2" in screen
    assert "step 4/4" not in screen, "plain lines only where there are no bars"
    finished = progress.jobs["qdylora"]["bar"]
    elapsed = finished.format_dict["elapsed"]
    time.sleep(0.3)
    assert finished.format_dict["elapsed"] == elapsed, "a finished bar does not count the time after it"
