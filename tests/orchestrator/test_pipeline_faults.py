"""Faults a pipeline survives or ends cleanly on: an evaluator dead for good, Ctrl-C in `dyrank run` and
`dyrank train`, a full disk while the driver writes the adapter or the summary."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.cache import FINISHED_MARKER
from orchestrator.cli import main
from orchestrator.pipeline import Pipeline, run_pipeline
from orchestrator.tags import EVALUATOR_BASE_LOADS_TAG, FAILURE_TAG
from tests.conftest import REPO, TINY_YAML, temp_tracking_store, tiny_config
from tests.orchestrator.test_pipeline import all_runs, assert_every_rank_once, children
from trainers.paths import cache_dir

pytestmark = pytest.mark.slow
SMALL = ["--set", "baselines.ranks=[]", "--set", "evaluation.ranks=[1,4,8]", "--set", "training.max_steps=20"]


@pytest.fixture
def store(tmp_path):
    with temp_tracking_store(tmp_path) as uri:
        yield uri


def test_an_evaluator_dead_for_good_leaves_zeroshot_test_and_stats_to_a_live_one(store, monkeypatch):
    started = Pipeline.start_evaluators
    dead = []

    def start_and_kill_the_first(self, n):
        pool = started(self, n)
        ray.kill(pool[0], no_restart=True)  # restarts used up: every call on it raises ActorDiedError
        dead.append(pool[0])
        return pool
    monkeypatch.setattr(Pipeline, "start_evaluators", start_and_kill_the_first)
    cfg = tiny_config("baselines.ranks=[]", "evaluation.ranks=[1,4,8]", "training.max_steps=20",
                      "training.checkpoint_every=5", "resources.num_evaluators=2")
    result = run_pipeline(cfg)  # pool[0] held the zero-shot score and used to get the test scoring

    runs = all_runs(store, result.parent_run_id)
    assert_every_rank_once(runs, result.parent_run_id, [1, 4, 8])
    [zeroshot] = children(runs, result.parent_run_id, "zeroshot")
    assert zeroshot.info.status == "FINISHED" and "eval_loss" in zeroshot.data.metrics
    assert result.test_metrics and all(k.startswith("test_") for k in result.test_metrics)
    parent = MlflowClient(store).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    loads = json.loads(parent.data.tags[EVALUATOR_BASE_LOADS_TAG])
    assert len(loads) == 1 and dead[0]._actor_id.hex() not in loads, "statistics only from the live evaluator"
    work = cache_dir("pipelines", result.parent_run_id)  # retention: a finished pipeline keeps adapters only
    assert (work / FINISHED_MARKER).is_file() and (work / "train" / "adapter").is_dir()
    assert not (work / "train" / "checkpoints").exists()


def test_ctrl_c_during_dyrank_run_marks_it_killed_in_one_line_and_it_resumes(store, monkeypatch, capsys):
    import orchestrator.cli_jobs as cli_jobs

    make_progress = cli_jobs._run_progress

    def progress_with_ctrl_c_at_the_first_rank(args, num_ranks):
        progress = make_progress(args, num_ranks)
        printed = progress.on_event

        def on_event(kind, payload):
            printed(kind, payload)
            if kind == "eval":
                raise KeyboardInterrupt
        progress.on_event = on_event
        return progress
    monkeypatch.setattr(cli_jobs, "_run_progress", progress_with_ctrl_c_at_the_first_rank)
    assert main(["run", str(TINY_YAML), *SMALL]) == 130
    out, err = capsys.readouterr()
    parent_id = out.split()[2]  # "pipeline run <id>  (MLflow: ...)"
    assert [line for line in err.splitlines() if line.startswith("dyrank ")] == [f"dyrank run: interrupted; pipeline run {parent_id} marked KILLED; "
                                        f"continue with: dyrank resume {parent_id}"]
    assert "Traceback" not in out + err
    parent = MlflowClient(store).get_run(parent_id)
    assert parent.info.status == "KILLED" and "dyrank resume" in parent.data.tags[FAILURE_TAG]
    assert not (cache_dir("pipelines", parent_id) / FINISHED_MARKER).exists(), "kept whole for resume"

    monkeypatch.setattr(cli_jobs, "_run_progress", make_progress)
    assert main(["resume", parent_id]) == 0
    assert_every_rank_once(all_runs(store, parent_id), parent_id, [1, 4, 8])
    assert MlflowClient(store).get_run(parent_id).info.status == "FINISHED"


def test_ctrl_c_during_dyrank_train_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "orchestrator.cli", "train", str(TINY_YAML), "--out", str(out),
               "--set", "training.max_steps=60", "--set", "training.checkpoint_every=5"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"dyrank train: interrupted; continue with: dyrank train --resume {out}"
    assert (out / "checkpoints").is_dir() and not (out / "train_summary.json").exists()

    assert main(["train", "--resume", str(out)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 60 and summary["resumed_from"] >= 10
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["orchestrator.pipeline.write_adapter_files", "dashboards.summary.write_pipeline_outputs"])
def test_a_full_disk_while_the_driver_writes_is_a_clean_failed_run(store, monkeypatch, capsys, target):
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[name]),
                        name, _disk_full)
    assert main(["run", str(TINY_YAML), *SMALL]) == 2
    out, err = capsys.readouterr()
    parent_id = out.split()[2]
    errors = [line for line in err.splitlines() if line.startswith("dyrank run")]
    assert errors == [f"dyrank run: error: pipeline run {parent_id} failed: OSError: [Errno 28] No space left on device"]
    assert "Traceback" not in err
    parent = MlflowClient(store).get_run(parent_id)
    assert parent.info.status == "FAILED" and "No space left on device" in parent.data.tags[FAILURE_TAG]
