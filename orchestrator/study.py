"""`dyrank study`: an Optuna study whose every trial is a whole pipeline on Ray.

The driver asks Optuna for trials and tells it results (ask-and-tell); it alone writes the study's
storage. Each trial's pipeline runs in a driver thread (its actors on Ray, several trials at once as
`parallel` allows); threads hand their events to the driver loop through a queue. Training steps reach
the loop through a ProgressBoard actor: the loop reports them to Optuna as intermediate values and, when
the pruner says so, stops that trial's training.

MLflow: one study run (dyrank.kind=study), every trial's pipeline run nested under it with the trial
number and parameters; the best value and parameters (or the Pareto front) on the study run.
optuna-integration's MLflowCallback is not used: it opens a run per trial of its own, beside the pipeline's.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import optuna
import ray
import yaml
from optuna.trial import TrialState

from orchestrator import ray_runtime
from orchestrator.buffered_tracking import BufferedTracker
from orchestrator.errors import PipelineError, TrackingError
from orchestrator.pipeline import OutputsWriter, run_pipeline
from orchestrator.provenance import provenance_tags
from orchestrator.redact import redact
from orchestrator.progress import ProgressBoard, StepSink
from orchestrator.study_config import StudyConfig
from orchestrator.study_storage import (FAILURE_ATTR, RUN_ATTR, counted, open_storage, orphan_callback, record_study_attrs,
                                        recover_orphans)
from orchestrator.tags import FAILURE_TAG, PARETO_TRIALS_TAG, RETRY_OF_TRIAL_TAG, STUDY_TAG, TRIAL_NUMBER_TAG, TRIAL_PARAMS_TAG
from orchestrator.tracking import MlflowTracker, check_reachable, resolve_tracking_uri

STUDY_RUN_ATTR = "mlflow_study_run_id"


@dataclass
class StudyResult:
    name: str
    storage: str
    study_run_id: str
    best: list[optuna.trial.FrozenTrial]  # the best trial, or the Pareto front
    states: dict[str, int] = field(default_factory=dict)


def _sampler(cfg: StudyConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded from the config and the trials already in the study: a resumed driver with the bare seed would
    replay the first driver's random draws and propose its trials again."""
    s = cfg.sampler
    seed = None if s.seed is None else s.seed + trials_so_far
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s.type == "qmc":  # a low-discrepancy sequence: the same seed, continued from where the study is
        return optuna.samplers.QMCSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True)


def _pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if not cfg.prunable:
        return optuna.pruners.NopPruner()
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps), max_resource=cfg.pipeline.training.max_steps)
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def _suggest(trial: optuna.Trial, cfg: StudyConfig) -> dict:
    params = {}
    for key, s in cfg.search_space.items():
        if s.type == "int":
            params[key] = trial.suggest_int(key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        elif s.type == "float":
            params[key] = trial.suggest_float(key, s.low, s.high, step=s.step, log=s.log)
        else:
            params[key] = trial.suggest_categorical(key, list(s.labels()))
    return params


def _objective_values(cfg: StudyConfig, metrics: dict) -> list[float]:
    metrics = {**metrics, "device_seconds": sum(metrics.get(f"{k}_device_seconds", 0.0) for k in ("train", "baseline", "eval"))}
    missing = [o.metric for o in cfg.objectives if o.metric not in metrics]
    if missing:
        raise PipelineError(f"the pipeline recorded no {', '.join(missing)} (objectives)")
    return [metrics[o.metric] for o in cfg.objectives]


class StudyDriver:
    def __init__(self, cfg: StudyConfig, on_event=None, write_outputs: OutputsWriter | None = None):
        self.cfg, self.on_event = cfg, on_event or (lambda kind, payload: None)
        self.write_outputs = write_outputs  # each trial's pipeline draws its table, CSV and plot with it
        self.uri = resolve_tracking_uri(cfg.pipeline.tracking.uri)
        check_reachable(self.uri)
        self.experiment = cfg.pipeline.tracking.experiment or cfg.name
        self.orphans: list = []
        self.on_orphan = orphan_callback(self.orphans)
        self.storage, self.single_driver = open_storage(cfg.storage_url(), cfg.heartbeat_seconds, self.on_orphan)
        self.study = optuna.create_study(storage=self.storage, study_name=cfg.name, directions=cfg.directions,
                                         sampler=_sampler(cfg), pruner=_pruner(cfg), load_if_exists=True)
        if [d.name.lower() for d in self.study.directions] != cfg.directions:
            raise PipelineError(f"study {cfg.name!r} in {redact(cfg.storage_url())} has directions "
                                f"{[d.name.lower() for d in self.study.directions]}, the file asks {cfg.directions}")
        self.study_id = self.storage.get_study_id_from_name(cfg.name)
        self.events: queue.Queue = queue.Queue()
        self.running: dict[int, optuna.Trial] = {}
        self.trial_ids: dict[int, int] = {}  # trial number -> the storage's trial id (heartbeats, system attrs)
        self.study_run: str | None = None  # the MLflow study run, opened by run()
        self.board = None  # the ProgressBoard actor while run() drives trials
        self.losses: dict[int, deque] = {}
        self.pruned_at: dict[int, int] = {}
        # Last, so nothing above can fail with its writer thread started; run() closes it on every path.
        self.tracker = BufferedTracker(MlflowTracker(self.uri), cfg.pipeline.tracking.max_outage_seconds)

    # ---- MLflow: the study run -------------------------------------------------------------------
    def _open_study_run(self) -> str:
        run_id = self.study.user_attrs.get(STUDY_RUN_ATTR)
        if run_id:
            try:
                self.tracker.reopen(run_id)
                return run_id
            except TrackingError:  # the run was deleted or the store changed: start a new one
                pass
        experiment_id = self.tracker.experiment_id(self.experiment)
        c = self.cfg
        run_id = self.tracker.create_run(experiment_id, "study", c.name, tags={STUDY_TAG: c.name, **provenance_tags()}, params={
            "n_trials": c.n_trials, "objectives": json.dumps([o.model_dump() for o in c.objectives]),
            "sampler": json.dumps(c.sampler.model_dump()), "pruner": json.dumps(c.pruner.model_dump()),
            "search_space": json.dumps({k: v.model_dump(exclude_none=True) for k, v in c.search_space.items()}),
            "storage": c.storage_url(), "base_pipeline": c.pipeline.name,
        })
        self.tracker.log_text(run_id, yaml.safe_dump(c.model_dump(mode="json"), sort_keys=False), "study.yaml")
        self.tracker.flush()  # the run's real id, not a pending handle: Optuna and the trials' pipelines keep it
        run_id = self.tracker.resolve(run_id)
        self.study.set_user_attr(STUDY_RUN_ATTR, run_id)
        return run_id

    def _record_best(self) -> list:
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return []
        metrics = {"finished_trials": counted(self.study.get_trials(deepcopy=False))}
        if len(self.cfg.objectives) == 1:
            best = [self.study.best_trial]
            metrics.update({"best_value": best[0].value, "best_trial": best[0].number,
                            f"best_{self.cfg.objectives[0].metric}": best[0].value})
            self.tracker.set_tags(self.study_run, {f"best.{k}": v for k, v in best[0].params.items()})
        else:
            best = self.study.best_trials
            metrics["pareto_front_size"] = len(best)
            self.tracker.set_tags(self.study_run, {PARETO_TRIALS_TAG: ",".join(str(t.number) for t in best)})
        self.tracker.log_metrics(self.study_run, metrics, step=metrics["finished_trials"])
        front = [{"trial": t.number, "values": t.values, "params": t.params,
                  "pipeline_run_id": t.user_attrs.get(RUN_ATTR)} for t in best]
        self.tracker.log_dict(self.study_run, front, "best_trials.json")
        return best

    # ---- trials ----------------------------------------------------------------------------------
    def _start_trial(self) -> None:
        trial = self.study.ask()
        try:  # from here on the trial is RUNNING in the storage: every way out must tell Optuna its end
            params = _suggest(trial, self.cfg)
        except Exception as exc:  # noqa: BLE001 - e.g. a space Optuna cannot sample
            self._fail(trial, f"parameters could not be suggested: {type(exc).__name__}: {exc}")
            return
        try:
            cfg = self.cfg.trial_config(params)
            cfg.name = f"{self.cfg.name}-trial-{trial.number}"
            cfg.tracking.experiment = self.experiment  # nested runs must share the study run's experiment
        except ValueError as exc:  # a combination the schema refuses (e.g. r_min > r_max)
            self._fail(trial, "invalid combination: " + " ".join(line.strip() for line in str(exc).splitlines()[:3]))
            return
        self.running[trial.number] = trial
        self.losses[trial.number] = deque(maxlen=self.cfg.pruner.smoothing_steps)
        tags = {STUDY_TAG: self.cfg.name, TRIAL_NUMBER_TAG: trial.number, TRIAL_PARAMS_TAG: json.dumps(params)}
        self.trial_ids[trial.number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        retried = self.storage.get_trial_system_attrs(self.trial_ids[trial.number]).get("failed_trial")
        if retried is not None:
            tags[RETRY_OF_TRIAL_TAG] = retried
        sink = StepSink(self.board, str(trial.number)) if self.cfg.prunable else None
        threading.Thread(target=self._trial_thread, args=(trial.number, cfg, tags, sink), daemon=True,
                         name=f"trial-{trial.number}").start()
        self.on_event("trial_started", {"number": trial.number, "params": params})

    def _trial_thread(self, number: int, cfg, tags: dict, sink) -> None:
        """Runs in its own thread: no Optuna calls here, only events for the driver loop."""
        try:
            result = run_pipeline(cfg, lambda kind, payload: self.events.put((number, kind, payload)),
                                  nest_under=self.study_run, run_tags=tags, step_sink=sink,
                                  write_outputs=self.write_outputs)
            self.events.put((number, "done", result))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the driver loop
            self.events.put((number, "error", exc))

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr(FAILURE_ATTR, reason[:1000])
        self.study.tell(trial, state=TrialState.FAIL)
        self.on_event("trial_failed", {"number": trial.number, "reason": reason})

    def _handle(self, number: int, kind: str, payload) -> None:
        trial = self.running.get(number)
        if kind == "started":
            trial.set_user_attr(RUN_ATTR, payload["parent_run_id"])
            return
        if kind not in ("done", "error"):
            return
        del self.running[number]
        if kind == "done":
            try:
                values = _objective_values(self.cfg, self.tracker.run(payload.parent_run_id).data.metrics)
            except PipelineError as exc:
                self._fail(trial, str(exc))
                return
            self.study.tell(trial, values)
            self.on_event("trial_done", {"number": number, "values": values, "run_id": payload.parent_run_id})
        elif number in self.pruned_at:
            self.study.tell(trial, state=TrialState.PRUNED)
            run_id = trial.user_attrs.get(RUN_ATTR)
            if run_id:  # the pipeline marked itself FAILED when its training stopped: it was pruned
                self.tracker.set_tags(run_id, {FAILURE_TAG: f"pruned by the study at step {self.pruned_at[number]}"})
                self.tracker.terminate(run_id, "KILLED")
            self.on_event("trial_pruned", {"number": number, "step": self.pruned_at[number]})
        else:
            self._fail(trial, f"{type(payload).__name__}: {payload}")
        self._record_best()

    def _pump_progress(self) -> None:
        """Training steps -> Optuna intermediate values -> pruning decisions (single objective only)."""
        sign = -1.0 if self.cfg.directions[0] == "maximize" else 1.0  # a lower loss is better either way
        for key, rows in ray.get(self.board.drain.remote()).items():
            number = int(key)
            trial = self.running.get(number)
            if trial is None or number in self.pruned_at:
                continue
            for row in rows:
                self.losses[number].append(row["train_loss"])
                trial.report(sign * sum(self.losses[number]) / len(self.losses[number]), row["step"])
                if trial.should_prune():
                    self.pruned_at[number] = row["step"]
                    self.board.stop.remote(key)
                    break

    def _recover(self) -> None:
        recover_orphans(self.study, self.storage, self.single_driver, self.on_orphan)
        if not self.orphans:
            return
        # By tag, not by the trial's mlflow_run_id: the driver may have died between creating the run and noting it.
        pipelines = self.tracker.children(self.study_run, kind="pipeline")
        for trial in self.orphans:
            for run in pipelines:
                if run.data.tags.get(TRIAL_NUMBER_TAG) == str(trial.number) and run.info.status == "RUNNING":
                    self.tracker.set_tags(run.info.run_id, {FAILURE_TAG: f"study interrupted; trial {trial.number}'s parameters re-enqueued"})
                    self.tracker.terminate(run.info.run_id, "KILLED")
            self.on_event("trial_requeued", {"number": trial.number, "params": trial.params})

    def _parallel(self) -> int:
        if self.cfg.parallel:
            return self.cfg.parallel
        r = self.cfg.pipeline.resources
        per_trial = r.trainer_cpus * (1 + len(self.cfg.pipeline.baselines.ranks)) + r.evaluator_cpus * (r.num_evaluators or 1)
        return max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> StudyResult:
        """The study to its end; its MLflow writes are all in the store when this returns or raises."""
        try:
            result = self._drive()
            self.tracker.flush()  # success only once every record is in the store
            return result
        finally:
            self.tracker.close()

    def _drive(self) -> StudyResult:
        ray_runtime.connect(self.cfg.pipeline.resources.ray_address)
        record_study_attrs(self.study, [o.metric for o in self.cfg.objectives], self.uri)
        self.study_run = self._open_study_run()
        self.on_event("study_started", {"name": self.cfg.name, "storage": redact(self.cfg.storage_url()),
                                        "study_run_id": self.study_run, "tracking_uri": redact(self.uri)})
        self._recover()
        self.study.sampler = _sampler(self.cfg, len(self.study.get_trials(deepcopy=False)))
        self.board = ProgressBoard.remote()
        parallel, last_beat = self._parallel(), 0.0
        try:
            while True:
                trials = self.study.get_trials(deepcopy=False)
                while len(self.running) < parallel and counted(trials) + len(self.running) < self.cfg.n_trials:
                    self._start_trial()
                    trials = self.study.get_trials(deepcopy=False)
                if not self.running:
                    break
                events = []
                try:
                    events.append(self.events.get(timeout=0.5))
                    while True:
                        events.append(self.events.get_nowait())
                except queue.Empty:
                    pass
                if self.cfg.prunable:  # before the events: a finished trial's last steps are on the board
                    self._pump_progress()
                for event in events:
                    self._handle(*event)
                if time.time() - last_beat > self.cfg.heartbeat_seconds / 2 and not self.single_driver:
                    for number in self.running:
                        self.storage.record_heartbeat(self.trial_ids[number])
                    last_beat = time.time()
        except KeyboardInterrupt:
            self.tracker.set_tags(self.study_run, {FAILURE_TAG: "interrupted; run the same command to resume"})
            self.tracker.terminate(self.study_run, "KILLED")
            raise
        except Exception as exc:  # the driver itself failed; running trials are recovered by the next start
            self.tracker.fail(self.study_run, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            ray.kill(self.board)
        best = self._record_best()
        self.tracker.finish(self.study_run)
        states = {}
        for t in self.study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        return StudyResult(self.cfg.name, self.cfg.storage_url(), self.study_run, best, states)


def run_study(cfg: StudyConfig, on_event=None, write_outputs: OutputsWriter | None = None) -> StudyResult:
    return StudyDriver(cfg, on_event, write_outputs).run()
