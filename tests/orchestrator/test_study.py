"""`dyrank study`: the schema refuses what cannot run, orphaned trials are re-enqueued once, and the tiny
study, killed mid-way and run again, ends with every trial counted once in Optuna and in MLflow."""

from __future__ import annotations

import datetime
import json

import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.cli import main
from orchestrator.config import ConfigError
from orchestrator.study_config import load_study_config
from orchestrator.study_storage import FAILURE_ATTR, counted, open_storage, orphan_callback, recover_orphans
from tests.study_fixture import STUDY_YAML


def backdate_heartbeat(storage, trial_id: int, seconds: float) -> None:
    """Move a trial's last heartbeat into the past, as a driver silent that long would have left it: the stale
    check compares it with the database's clock, so no test has to sleep through a grace period."""
    import sqlalchemy

    beats = sqlalchemy.Table("trial_heartbeats", sqlalchemy.MetaData(), autoload_with=storage.engine)  # typed columns
    with storage.engine.begin() as connection:
        last = connection.execute(sqlalchemy.select(beats.c.heartbeat).where(beats.c.trial_id == trial_id)).scalar_one()
        connection.execute(beats.update().where(beats.c.trial_id == trial_id)
                           .values(heartbeat=last - datetime.timedelta(seconds=seconds)))


def _study_file(tmp_path, **changes) -> str:
    import yaml

    raw = yaml.safe_load(STUDY_YAML.read_text())
    raw["pipeline"] = str(STUDY_YAML.parent / raw["pipeline"])
    raw.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_example_loads_with_its_pipeline_changes():
    cfg = load_study_config(STUDY_YAML, ["pipeline.training.max_steps=5"])
    assert cfg.pipeline.training.max_steps == 5  # the command line wins over pipeline_set
    assert cfg.pipeline.baselines.ranks == [2] and cfg.prunable and cfg.directions == ["minimize"]
    trial = cfg.trial_config({"training.lr": 1e-3, "adapter.alpha": 8.0, "adapter.r_max": 3, "adapter.dropout": 0.0,
                              "adapter.target_modules": '["q_proj", "v_proj"]'})
    assert trial.adapter.target_modules == ["q_proj", "v_proj"] and trial.adapter.r_max == 3


@pytest.mark.parametrize("changes, message", [
    ({"search_space": {"adapter.method": {"type": "categorical", "choices": ["qdylora", "bogus"]}}},
     "search_space.adapter.method: value 'bogus' is not accepted"),
    ({"search_space": {"adapter.rmax": {"type": "int", "low": 2, "high": 4}}}, "search_space.adapter.rmax: not a pipeline field"),
    ({"search_space": {"training.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}}, "log scale needs low > 0"),
    ({"objectives": [{"metric": "best_eval_loss"}, {"metric": "best_rank"}]}, "pruners do not support multi-objective"),
    ({"objectives": [{"metric": "eval_los"}]}, "unknown metric 'eval_los'"),
    ({"storage": "redis://x"}, "unsupported storage"),
])
def test_bad_study_is_one_line_naming_the_field(tmp_path, capsys, changes, message):
    path = _study_file(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_study_config(path)
    assert main(["study", path]) == 2
    assert message in capsys.readouterr().err


def test_multi_objective_without_pruner_is_accepted(tmp_path):
    cfg = load_study_config(_study_file(tmp_path, objectives=[{"metric": "best_eval_loss"}, {"metric": "device_seconds"}],
                                        pruner={"type": "none"}))
    assert cfg.directions == ["minimize", "minimize"] and not cfg.prunable


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_orphaned_trial_is_failed_and_its_params_reenqueued_once(tmp_path, kind):
    url = f"sqlite:///{tmp_path}/o.db" if kind == "sqlite" else f"journal:{tmp_path}/o.log"
    found = []
    storage, single_driver = open_storage(url, 60, orphan_callback(found))
    study = optuna.create_study(storage=storage, study_name="s")
    done, orphan = study.ask(), study.ask()
    done.suggest_float("x", 0, 1)
    orphan_x = orphan.suggest_float("x", 0, 1)
    study.tell(done, 1.0)
    assert single_driver
    recover_orphans(study, storage, single_driver, orphan_callback(found))
    recover_orphans(study, storage, single_driver, orphan_callback(found))  # a second start finds nothing new
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert [t.number for t in found] == [orphan.number]
    retry = study.get_trials()[2]
    assert retry.params == {"x": orphan_x} and retry.system_attrs["failed_trial"] == orphan.number
    assert counted(study.get_trials()) == 1  # the orphan is not counted; its retry will be
    assert study.ask().params == {"x": orphan_x}


def test_a_trial_whose_parameters_cannot_be_suggested_is_failed_not_left_running(tmp_path, monkeypatch):
    import orchestrator.study as study_module
    from orchestrator.study_config import load_study_config
    from orchestrator.study_storage import FAILURE_ATTR

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = load_study_config(_study_file(tmp_path, storage=f"sqlite:///{tmp_path}/optuna.db"))

    def cannot_suggest(trial, cfg):
        raise ValueError("the distribution is empty")

    monkeypatch.setattr(study_module, "_suggest", cannot_suggest)
    driver = study_module.StudyDriver(cfg)
    try:
        driver._start_trial()
    finally:
        driver.tracker.close()
    (trial,) = driver.study.get_trials()
    assert trial.state == TrialState.FAIL and "could not be suggested" in trial.user_attrs[FAILURE_ATTR]
    assert not driver.running


# ---- the tiny study, end to end (tests/study_fixture.py) ---------------------------------------------


@pytest.mark.slow
def test_interrupted_study_resumes_and_counts_every_trial_once(tiny_study):
    trials = optuna.load_study(study_name="study-tiny", storage=tiny_study.storage).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 == counted(trials), [(t.number, t.state) for t in trials]
    orphans = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in orphans) == sorted(tiny_study.interrupted)
    assert not any(FAILURE_ATTR in t.user_attrs for t in orphans)  # failed by the interruption, not in their pipeline
    for orphan in orphans:  # re-run exactly once, with every parameter it had (none if the crash came first)
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
        assert len(retries) == 1 and orphan.params.items() <= retries[0].params.items() and retries[0] in finished
    assert "was interrupted: its parameters are re-enqueued" in tiny_study.second_output
    proposals = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(proposals)) == len(proposals), "the resumed driver proposed a trial again"
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


@pytest.mark.slow
def test_study_run_nests_every_trial_pipeline_with_best_params(tiny_study):
    client = MlflowClient(tiny_study.tracking_uri)
    experiment = client.get_experiment_by_name("study-tiny")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    [study_run] = [r for r in runs if r.data.tags.get("dyrank.kind") == "study"]
    assert study_run.info.status == "FINISHED"
    pipelines = [r for r in runs if r.data.tags.get("dyrank.kind") == "pipeline"]
    assert all(r.data.tags["mlflow.parentRunId"] == study_run.info.run_id for r in pipelines)
    study = optuna.load_study(study_name="study-tiny", storage=tiny_study.storage)
    trials = study.get_trials()
    numbers = [int(r.data.tags["dyrank.trial_number"]) for r in pipelines]
    assert len(numbers) == len(set(numbers)), "a trial has two pipeline runs"
    assert {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)} <= set(numbers)
    expected_status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "KILLED"}
    for run in pipelines:
        trial = trials[int(run.data.tags["dyrank.trial_number"])]
        assert run.info.status == expected_status[trial.state], (trial.number, trial.state, run.info.status)
        if trial.state != TrialState.FAIL:
            assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert json.loads(run.data.tags["dyrank.trial_params"]) == trial.params
        assert float(run.data.params["training.lr"]) == pytest.approx(trial.params["training.lr"])
        if trial.state == TrialState.COMPLETE:  # policy best: the lowest validation loss its eval runs recorded
            evals = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id
                     and r.data.tags.get("dyrank.kind") == "eval"]
            assert trial.value == pytest.approx(min(r.data.metrics["eval_loss"] for r in evals))
            assert run.data.metrics["best_eval_loss"] == pytest.approx(trial.value)
    best = study.best_trial
    assert best.value == min(t.value for t in trials if t.state == TrialState.COMPLETE)  # direction: minimize
    assert study_run.data.metrics["best_value"] == pytest.approx(best.value)
    assert int(study_run.data.metrics["best_trial"]) == best.number
    assert {k.removeprefix("best."): v for k, v in study_run.data.tags.items() if k.startswith("best.")} == \
        {k: str(v) for k, v in best.params.items()}


@pytest.mark.slow
def test_pruned_trial_stops_its_training_and_is_recorded(tmp_path, monkeypatch, capsys):
    """The threshold pruner prunes any loss above 0 once warmed up: deterministic, one short trial."""
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        assert main(["study", str(STUDY_YAML), "--set", "name=pruned", "--set", "n_trials=1", "--set", "parallel=1",
                     "--set", "pruner={type: threshold, upper: 0.0, n_warmup_steps: 2}",
                     "--set", "pipeline.training.max_steps=40", "--set", "pipeline.baselines.ranks=[]"]) == 0
    finally:
        ray.shutdown()
    assert "trial 0 pruned at step 2" in capsys.readouterr().out  # the first step past the warm-up
    [trial] = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [1, 2]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["dyrank.failure_reason"] == "pruned by the study at step 2"
    [train] = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert train.info.status == "FAILED" and "stopped by the driver at step" in train.data.tags["dyrank.failure_reason"]
    assert "best_eval_loss" not in run.data.metrics  # the sweep never ran


def test_shared_storage_recovers_only_trials_whose_heartbeat_went_stale(tmp_path):
    """The RDB-server path (several drivers), on sqlite: a silent trial is retried, a beating one is left alone."""
    from optuna.storages import RDBStorage

    found = []
    storage = RDBStorage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=2,
                         heartbeat_stale_trial_callback=orphan_callback(found))
    study = optuna.create_study(storage=storage, study_name="s")
    silent, alive = study.ask(), study.ask()
    silent.suggest_int("n", 1, 9)
    storage.record_heartbeat(silent._trial_id)
    backdate_heartbeat(storage, silent._trial_id, seconds=3)  # its driver went silent 3 s ago, past the 2 s grace
    storage.record_heartbeat(alive._trial_id)  # another driver's trial, still beating
    recover_orphans(study, storage, False, None)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {silent.number: TrialState.FAIL, alive.number: TrialState.RUNNING, 2: TrialState.WAITING}
    assert [t.number for t in found] == [silent.number]
    assert study.get_trials()[2].params == silent.params
