"""Interrupted pipelines finish with `dyrank resume`; bad input stops before any actor starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.pipeline import run_pipeline
from tests.conftest import TINY_YAML, tiny_config
from tests.orchestrator.test_pipeline import all_runs, assert_every_rank_once, children

pytestmark = pytest.mark.slow


def _first_checkpoint(parent_id: str):
    """The training's first complete checkpoint folder, once it exists (None before)."""
    from trainers.paths import cache_dir  # the session's DYRANK_HOME, which the driver inherits

    folder = cache_dir("pipelines", parent_id) / "train" / "checkpoints"
    done = [p for p in (folder.iterdir() if folder.is_dir() else []) if p.name.startswith("step-") and
            not p.name.endswith(".tmp")]
    return done[0] if done else None


@pytest.mark.timeout(600)
def test_driver_killed_during_training_resumes_from_its_checkpoint_and_reuses_a_running_child(tmp_path, monkeypatch,
                                                                                               capsys):
    """SIGKILL the driver and its private Ray once training has checkpointed (nothing recorded under the parent
    yet); add the RUNNING child run a driver killed between creating a run and finishing it leaves behind; then
    `dyrank resume`: training restarts from the checkpoint, that run is reused, every rank is recorded once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(TINY_YAML), "--set", "training.max_steps=60",
         "--set", "training.checkpoint_every=10", "--set", "baselines.ranks=[]", "--set", "evaluation.max_samples=8"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True,
    )
    try:
        parent_id = driver.stdout.readline().split()[2]  # "pipeline run <id>  (MLflow: ...)"
        deadline = time.time() + 300
        while _first_checkpoint(parent_id) is None and time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)  # polls for the file; the kill itself waits on nothing else
        tree = psutil.Process(driver.pid).children(recursive=True)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    for process in tree:  # Ray's own processes may sit in sessions of their own: each by its PID
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)
    checkpoint = _first_checkpoint(parent_id)
    assert checkpoint is not None, "the driver ended before training checkpointed"
    client = MlflowClient(uri)
    assert client.get_run(parent_id).info.status == "RUNNING"
    assert not children(all_runs(uri, parent_id), parent_id, "train"), "the kill should land during training"

    experiment = client.get_run(parent_id).info.experiment_id
    left = client.create_run(experiment, run_name="rank-3", tags={  # as create_run wrote it, params never sent
        "mlflow.parentRunId": parent_id, "dyrank.kind": "eval", "dyrank.rank": "3"}).info.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        assert main(["resume", parent_id]) == 0
    finally:
        ray.shutdown()
    runs = all_runs(uri, parent_id)
    assert_every_rank_once(runs, parent_id, range(1, 9))
    [rank3] = [r for r in children(runs, parent_id, "eval") if r.data.params["rank"] == "3"]
    assert rank3.info.run_id == left, "the RUNNING child run was duplicated instead of reused"
    [train] = children(runs, parent_id, "train")
    assert train.info.status == "FINISHED"
    assert 10 <= train.data.metrics["resumed_from_step"] < 60, train.data.metrics
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "sampled_rank")]
    assert sorted(steps) == list(range(1, 61)), "every step recorded exactly once"
    assert len(children(runs, parent_id, "zeroshot")) == 1
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert main(["resume", parent_id]) == 0 and "already finished" in capsys.readouterr().out


def _run_bad(capsys, *args) -> str:
    ray.shutdown()  # whatever an earlier test left: the check below is about this run alone
    assert main(["run", str(TINY_YAML), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not ray.is_initialized(), "an actor-side resource was started before the input was checked"
    return err


def test_unreachable_tracking_uri_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert "http://127.0.0.1:9" in _run_bad(capsys)


def test_unreachable_ray_address_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "127.0.0.1:9" in _run_bad(capsys, "--set", "resources.ray_address=127.0.0.1:9")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()]), "no run before the checks pass"


def test_inside_a_ray_job_without_tracking_uri_says_how_to_pass_one(monkeypatch, capsys):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert "MLFLOW_TRACKING_URI" in _run_bad(capsys)


def test_bad_jsonl_names_file_and_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    err = _run_bad(capsys, "--set", "data.dataset=null", "--set", f"data.train_file={bad}")
    assert f"{bad}:2" in err


def test_killed_trainer_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import threading

    from trainers.paths import cache_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    killed, stop = [], threading.Event()

    def kill_after_first_checkpoint(parent_id):
        checkpoints = cache_dir("pipelines", parent_id) / "train" / "checkpoints"
        while not stop.is_set():
            if any(p.name.startswith("step-") and not p.name.endswith(".tmp") for p in
                   (checkpoints.iterdir() if checkpoints.is_dir() else [])):
                ray.kill(ray.get_actor(f"Trainer-{parent_id[:12]}-train"), no_restart=False)
                killed.append(True)
                return
            time.sleep(0.05)

    def on_event(kind, payload):
        if kind == "started":
            threading.Thread(target=kill_after_first_checkpoint, args=(payload["parent_run_id"],), daemon=True).start()

    # 60 steps: the first checkpoint at 10 leaves 50 to kill in; the kill is driven by the file, not a timer.
    cfg = tiny_config("training.max_steps=60", "training.checkpoint_every=10", "baselines.ranks=[]",
                      "evaluation.ranks=[1,8]")
    try:
        result = run_pipeline(cfg, on_event=on_event)
    finally:
        stop.set()
        ray.shutdown()
    assert killed, "the trainer finished before it could be killed"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [train] = children(all_runs(uri, result.parent_run_id), result.parent_run_id, "train")
    assert train.info.status == "FINISHED" and train.data.metrics["resumed_from_step"] >= 10
    steps = [m.step for m in MlflowClient(uri).get_metric_history(train.info.run_id, "sampled_rank")]
    assert sorted(steps) == list(range(1, 61)), "every step recorded exactly once"


def test_failure_inside_a_run_marks_it_failed_with_the_reason(tmp_path, monkeypatch, capsys):
    """A model folder that passes every up-front check (its config.json is fine) but whose weights are cut short:
    the actors fail while loading it, and the runs say why."""
    import shutil

    from trainers.models import build_preset

    model = tmp_path / "model"
    shutil.copytree(build_preset("tiny-llama"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        code = main(["run", str(TINY_YAML), "--set", f"model.source={model}", "--set", "baselines.ranks=[]",
                     "--set", "resources.max_restarts=0"])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len([l for l in err.splitlines() if "error:" in l]) == 1
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    failed = [r for r in runs if r.info.status == "FAILED"]
    kinds = {r.data.tags["dyrank.kind"] for r in failed}
    assert "pipeline" in kinds and kinds & {"train", "zeroshot"}, kinds  # the parent, and the work that failed
    for run in failed:
        assert run.data.tags["dyrank.failure_reason"].strip(), run.data.tags
