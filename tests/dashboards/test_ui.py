"""`dyrank ui`: both servers on 127.0.0.1 against the study's stores; the MLflow UI's experiment page,
loaded in headless Chromium, lists the pipeline runs; Ctrl-C stops both."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.browser import dump_dom
from tests.study_fixture import REPO

pytestmark = pytest.mark.slow


def _get(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=10).read()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def test_ui_serves_mlflow_and_optuna_and_stops_on_ctrl_c(tiny_study):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri", tiny_study.tracking_uri,
                           "--storage", tiny_study.storage, "--mlflow-port", "0", "--optuna-port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines = []
    try:
        for line in ui.stdout:
            lines.append(line)
            if "Ctrl-C stops both" in line or ui.poll() is not None:
                break
        text = "".join(lines)
        mlflow_url = re.search(r"MLflow UI:\s+(http://127\.0\.0\.1:\d+)", text).group(1)
        optuna_url = re.search(r"optuna-dashboard:\s+(http://127\.0\.0\.1:\d+)", text).group(1)

        client = MlflowClient(tiny_study.tracking_uri)
        experiment = client.get_experiment_by_name("study-tiny")
        found = json.loads(_get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=study-tiny"))
        assert found["experiment"]["experiment_id"] == experiment.experiment_id
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        dom = dump_dom(f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs", budget_ms=30_000, timeout=180)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)))
        # The runs table drew from the server's data: the study run (its pipelines nest under it) and the count.
        assert "Run Name" in text and f"{len(runs)} matching runs" in text, text[:3000]
        assert re.search(r"Run Name .*study-tiny", text)

        # The MLflow server reads the study's store: the same runs MlflowClient finds there, by id.
        served = _post(f"{mlflow_url}/api/2.0/mlflow/runs/search",
                       {"experiment_ids": [experiment.experiment_id], "max_results": 1000})["runs"]
        assert sorted(r["info"]["run_id"] for r in served) == sorted(r.info.run_id for r in runs)

        studies = json.loads(_get(f"{optuna_url}/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["study-tiny"]
        # optuna-dashboard reads the study's storage: each finished trial's value is the best_eval_loss its pipeline
        # run recorded in MLflow, and its best trial is the lowest of those.
        detail = json.loads(_get(f"{optuna_url}/api/studies/{studies[0]['study_id']}"))
        recorded = {}
        for trial in detail["trials"]:
            if trial["state"] == "Complete":
                run_id = next(a["value"] for a in trial["user_attrs"] if a["key"] == "mlflow_run_id")
                recorded[trial["number"]] = client.get_run(run_id).data.metrics["best_eval_loss"]
                assert trial["values"] == [pytest.approx(recorded[trial["number"]])], trial["number"]
        assert recorded and [t["number"] for t in detail["best_trials"]] == [min(recorded, key=recorded.get)]
    finally:
        os.kill(ui.pid, signal.SIGINT)
        out, _ = ui.communicate(timeout=60)
    assert ui.returncode == 0 and "stopped" in out
    for url in (mlflow_url, optuna_url):
        with pytest.raises(urllib.error.URLError):
            _get(url)
