"""The study driver's loop with every sampler and pruner the schema accepts, a multi-objective study, and two
drivers sharing one study on a real PostgreSQL server. Each trial's pipeline is a stand-in (the real one is
tested end to end by the tiny study in test_study.py) that records a pipeline run with the metrics a real one
would and reports training steps through the driver's progress board: the driver's own code runs unchanged."""

from __future__ import annotations

import math
import os
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
import ray
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import orchestrator.study as study_module
from orchestrator.errors import PipelineError
from orchestrator.progress import ProgressBoard
from orchestrator.study_config import load_study_config
from orchestrator.tags import KIND_TAG, PARENT_TAG, PARETO_TRIALS_TAG, TRIAL_NUMBER_TAG
from tests.orchestrator.test_study import _study_file

STEPS = 4


def objective(params: dict) -> float:
    """The stand-in pipeline's validation loss, computed here independently of the driver."""
    return (math.log10(params["training.lr"]) + 2.5) ** 2 + params["adapter.alpha"] / 100


@ray.remote(num_cpus=0)
class WatchedBoard(ProgressBoard.__ray_actor_class__):
    """The driver's progress board, plus a way for a stand-in trainer to wait until the driver has read its
    step (so a pruning decision lands at the step it was made for, however loaded the machine is)."""

    def unread(self, key: str) -> int:
        return len(self.rows.get(key, []))


class StandInPipeline:
    """Called by the driver as run_pipeline(cfg, on_event, nest_under=..., run_tags=..., step_sink=...)."""

    def __init__(self, train_loss=lambda number: 1.0, rendezvous: threading.Barrier | None = None):
        self.train_loss, self.rendezvous, self.calls = train_loss, rendezvous, []

    def __call__(self, cfg, on_event, *, nest_under=None, run_tags=None, step_sink=None, write_outputs=None, **_):
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
        number = int(run_tags[TRIAL_NUMBER_TAG])
        run = client.create_run(experiment, run_name=cfg.name, tags={
            **{k: str(v) for k, v in run_tags.items()}, PARENT_TAG: nest_under, KIND_TAG: "pipeline"}).info.run_id
        self.calls.append(number)
        on_event("started", {"parent_run_id": run})
        if self.rendezvous is not None and len(self.calls) <= self.rendezvous.parties:
            self.rendezvous.wait(timeout=120)  # the first trials run at the same time, one in each driver
        params = {"training.lr": cfg.training.lr, "adapter.alpha": cfg.adapter.alpha}
        for step in range(1, STEPS + 1):
            if step_sink is not None:
                # A stop decided for step s is seen at the next report (s + 1), as a real trainer sees it.
                stop = step_sink({"step": step, "train_loss": self.train_loss(number)})
                while ray.get(step_sink.board.unread.remote(step_sink.key)):  # until the driver has read it
                    time.sleep(0.05)
                if stop:
                    client.set_terminated(run, "FAILED")
                    raise PipelineError(f"training stopped by the driver at step {step}")
        metrics = {"best_eval_loss": objective(params), "best_rank": float(cfg.adapter.r_max),
                   "train_device_seconds": 1.0, "eval_device_seconds": 0.5}
        client.log_batch(run, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()])
        client.set_terminated(run)
        return SimpleNamespace(parent_run_id=run)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # the drivers join it (ray_runtime.connect)
    yield
    ray.shutdown()


@pytest.fixture
def drive(local_ray, tmp_path, monkeypatch):
    """drive(pipeline, *overrides, **study_file_changes) -> the driver after its run() returned."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(study_module, "ProgressBoard", WatchedBoard)

    def run(pipeline, *overrides, **changes):
        monkeypatch.setattr(study_module, "run_pipeline", pipeline)
        path = _study_file(tmp_path, storage=f"sqlite:///{tmp_path}/optuna.db", **changes)
        driver = study_module.StudyDriver(load_study_config(path, ["parallel=1", *overrides]))
        driver.result = driver.run()
        return driver
    return run


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsgaii": optuna.samplers.NSGAIISampler, "qmc": optuna.samplers.QMCSampler}


NUMERIC_SPACE = {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},  # qmc takes no categorical
                 "adapter.alpha": {"type": "float", "low": 8, "high": 32}, "adapter.r_max": {"type": "int", "low": 2, "high": 3}}


@pytest.mark.parametrize("kind", SAMPLERS)
def test_each_sampler_drives_a_study_to_its_end(drive, kind):
    driver = drive(StandInPipeline(), "n_trials=2", f"sampler.type={kind}", "pruner.type=none", search_space=NUMERIC_SPACE)
    trials = driver.study.get_trials()
    assert type(driver.study.sampler) is SAMPLERS[kind]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    assert all(t.value == pytest.approx(objective(t.params)) for t in trials)
    assert driver.result.best[0].number == min(trials, key=lambda t: t.value).number
    assert trials[0].params != trials[1].params, "the sampler proposed the same trial twice"


def _pareto_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """Trials no other trial beats on both (loss minimized, rank maximized)."""
    def beats(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b
    return {n for n, p in points.items() if not any(beats(q, p) for m, q in points.items() if m != n)}


def test_multi_objective_study_records_its_pareto_front(drive):
    driver = drive(StandInPipeline(), "n_trials=5", "sampler.type=random", "sampler.seed=3",
                   objectives=[{"metric": "best_eval_loss"}, {"metric": "best_rank", "direction": "maximize"}],
                   pruner={"type": "none"})
    trials = driver.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    points = {t.number: (objective(t.params), float(t.params["adapter.r_max"])) for t in trials}
    assert all(t.values == pytest.approx(list(points[t.number])) for t in trials)
    front = _pareto_front(points)
    assert {t.number for t in driver.result.best} == front
    study_run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(driver.study_run)
    assert set(map(int, study_run.data.tags[PARETO_TRIALS_TAG].split(","))) == front
    assert study_run.data.metrics["pareto_front_size"] == len(front)


BAD = 2  # the trial whose training loss lags: 10 where the others have 1
PRUNERS = {
    "median": ({"type": "median", "n_startup_trials": 2, "n_warmup_steps": 2}, True),
    "percentile": ({"type": "percentile", "percentile": 25.0, "n_startup_trials": 2, "n_warmup_steps": 2}, True),
    "threshold": ({"type": "threshold", "upper": 5.0, "n_warmup_steps": 2}, True),
    "hyperband": ({"type": "hyperband", "n_warmup_steps": 2}, None),  # prunes by bracket: either outcome is right
    "none": ({"type": "none"}, False),
}


@pytest.mark.parametrize("kind", PRUNERS)
def test_each_pruner_stops_only_the_lagging_trial(drive, kind):
    pruner, prunes = PRUNERS[kind]
    pipeline = StandInPipeline(train_loss=lambda number: 10.0 if number == BAD else 1.0)
    driver = drive(pipeline, "n_trials=3", "sampler.type=random", f"pipeline.training.max_steps={STEPS}", pruner=pruner)
    states = [t.state for t in driver.study.get_trials()]
    assert states[:BAD] == [TrialState.COMPLETE] * BAD, states
    bad = driver.study.get_trials()[BAD]
    if prunes is None:
        prunes = bad.state == TrialState.PRUNED
    assert bad.state == (TrialState.PRUNED if prunes else TrialState.COMPLETE), (kind, states)
    if prunes and kind != "hyperband":  # pruned at the first step past the warm-up, and nothing reported after
        assert sorted(bad.intermediate_values) == [1, 2]
        run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(bad.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["dyrank.failure_reason"] == "pruned by the study at step 2"
    if kind == "none":  # nothing to prune with: the trainers report no steps at all
        assert bad.intermediate_values == {} and pipeline.calls == [0, 1, 2]
    elif not prunes:
        assert sorted(bad.intermediate_values) == list(range(1, STEPS + 1)), "every step reported, none stopped"


@pytest.mark.timeout(400)
def test_two_drivers_share_a_postgresql_study_and_retry_a_dead_drivers_trial(local_ray, tmp_path, monkeypatch):
    """Through open_storage on a real PostgreSQL server: a third driver died with a trial RUNNING (its last
    heartbeat long past); two live drivers run the study together, one of them fails and re-enqueues that trial
    once, both beat for their own running trials, and every trial ends exactly once."""
    import uuid

    import sqlalchemy

    from orchestrator.study_storage import FAILURE_ATTR, counted, open_storage
    from tests.orchestrator.test_study import backdate_heartbeat
    from tests.support.postgres import Postgres

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(study_module, "ProgressBoard", WatchedBoard)
    pipeline = StandInPipeline(rendezvous=threading.Barrier(2))
    monkeypatch.setattr(study_module, "run_pipeline", pipeline)
    postgres = Postgres()
    try:
        url = postgres.create_database("optuna", "optuna", uuid.uuid4().hex)
        path = _study_file(tmp_path, storage=url, heartbeat_seconds=1, search_space=NUMERIC_SPACE)
        cfg = load_study_config(path, ["n_trials=4", "parallel=1", "pruner.type=none"])
        storage, single_driver = open_storage(url, 1, None)
        assert not single_driver
        study = optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.directions)
        dead = study.ask()
        dead_lr = dead.suggest_float("training.lr", 1e-3, 1e-2, log=True)
        storage.record_heartbeat(dead._trial_id)
        backdate_heartbeat(storage, dead._trial_id, seconds=60)

        drivers = [study_module.StudyDriver(cfg) for _ in range(2)]
        errors = []

        def run(driver):
            try:
                driver.run()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(d,)) for d in drivers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors and not any(t.is_alive() for t in threads), errors
        assert not pipeline.rendezvous.broken, "the two drivers never had a trial running at the same time"

        trials = optuna.load_study(study_name=cfg.name, storage=url).get_trials()
        assert trials[dead.number].state == TrialState.FAIL and FAILURE_ATTR not in trials[dead.number].user_attrs
        [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert retry.state == TrialState.COMPLETE and retry.params["training.lr"] == dead_lr
        assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        assert counted(trials) in (4, 5), "each driver stops at n_trials; both may start the last one"
        assert sorted(pipeline.calls) == [t.number for t in trials if t.number != dead.number], "a trial ran twice"
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            beating = {row[0] for row in connection.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))}
        engine.dispose()
        assert {t._trial_id for t in trials if t.number in pipeline.calls[:2]} <= beating, "a running trial never beat"
    finally:
        postgres.stop()
