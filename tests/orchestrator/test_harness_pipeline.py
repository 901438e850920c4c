"""Harness tasks in the pipeline (`evaluation.harness.tasks`): the evaluators score the selected rank and each
baseline scores itself; the metrics are recorded on their runs like every other metric. And `dyrank harness`
on a train folder, several ranks in one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.orchestrator.test_pipeline import all_runs, children

pytestmark = pytest.mark.slow
METRIC = "harness_dyrank_countries_acc"


def test_pipeline_records_harness_metrics_and_the_cli_shows_progress(tmp_path):
    """Through `dyrank run` (bare KEY=VALUE overrides, --log-file): harness metrics land on the selected rank's
    eval run, the baseline run and the parent; stderr (not a terminal here) gets plain progress lines."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    log = tmp_path / "progress.log"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(REPO / "examples" / "tiny.yaml"), "training.max_steps=10",
           "baselines.ranks=[2]", "evaluation.ranks=[1,4]", "--set", "evaluation.harness.tasks=[dyrank_countries]",
           "evaluation.harness.limit=8", "--log-file", str(log)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    parent_id = done.stdout.split("parent run: ")[1].split()[0]
    for job in ("qdylora", "qlora-r2"):
        assert f"train {job}: step 10/10, loss " in done.stderr and "ETA 00:00" in done.stderr
    assert "sweep: 2/2 ranks scored" in done.stderr
    assert "train qdylora: step 10/10" in log.read_text() and "rank   4: eval_loss" in log.read_text()

    runs = all_runs(uri, parent_id)
    evals = {int(r.data.params["rank"]): r.data.metrics for r in children(runs, parent_id, "eval")}
    assert set(evals) == {1, 4}
    parent = MlflowClient(uri).get_run(parent_id).data
    selected = int(parent.metrics["best_rank"])
    assert 0.0 <= evals[selected][METRIC] <= 1.0
    assert all(METRIC not in evals[r] for r in evals if r != selected), "without every_rank only the selected rank"
    [baseline] = children(runs, parent_id, "baseline")
    assert 0.0 <= baseline.data.metrics[METRIC] <= 1.0
    assert parent.metrics[f"selected_{METRIC}"] == evals[selected][METRIC]


def test_dyrank_harness_scores_several_ranks_of_a_train_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    folder, scores = tmp_path / "run", tmp_path / "scores.json"
    train = [sys.executable, "-m", "orchestrator.cli", "train", str(REPO / "examples" / "tiny.yaml"), "--out", str(folder),
             "training.max_steps=5"]
    assert subprocess.run(train, env=env, capture_output=True, text=True).returncode == 0
    cmd = [sys.executable, "-m", "orchestrator.cli", "harness", str(folder), "--rank", "2", "8", "--tasks",
           "dyrank_countries", "--limit", "8", "--out", str(scores)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["rank", METRIC, f"{METRIC}_norm"]
    recorded = json.loads(scores.read_text())
    assert set(recorded) == {"2", "8"} and all(0.0 <= row[METRIC] <= 1.0 for row in recorded.values())

    bad = subprocess.run([*cmd[:5], "--rank", "9", "--tasks", "dyrank_countries"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--rank 9" in bad.stderr and "Traceback" not in bad.stderr
