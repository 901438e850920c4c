"""Where a study lives, and how an interrupted one is picked up again.

- sqlite (the default `./optuna.db`) and `journal:PATH`: one driver per study at a time, so every trial
  a new driver finds RUNNING was left by a dead one: it is failed and its parameters re-enqueued at once.
- an RDB server (postgresql/mysql): several drivers may share a study; the driver records Optuna
  heartbeats for its running trials, and only trials silent past the grace period are failed and retried.
Re-enqueueing is Optuna's RetryHeartbeatStaleTrialCallback: the new trial carries `failed_trial`/`retry_history`.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import UsageError
from orchestrator.redact import redact
from orchestrator.study_config import parse_storage_url

FAILURE_ATTR = "dyrank.failure"  # set on trials that failed inside their pipeline (they count as done)
RUN_ATTR = "mlflow_run_id"  # the trial's pipeline run


def open_storage(url: str, heartbeat_seconds: int, on_orphan) -> tuple[optuna.storages.BaseStorage, bool]:
    """(storage, single_driver). on_orphan(study, trial) is called for each trial failed as stale."""
    try:
        scheme, file = parse_storage_url(url)  # the same parse the study schema made
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if scheme == "journal":
        return JournalStorage(JournalFileBackend(str(file.resolve()))), True
    single_driver = scheme == "sqlite"
    heartbeat = {} if single_driver else {"heartbeat_interval": heartbeat_seconds, "grace_period": 2 * heartbeat_seconds,
                                          "heartbeat_stale_trial_callback": on_orphan}
    try:
        storage = RDBStorage(url, **heartbeat)
    except Exception as exc:  # sqlalchemy's errors name the driver or the host; keep the first line
        raise UsageError(redact(f"storage {url}: {str(exc).strip().splitlines()[0]}")) from None
    return storage, single_driver


def record_study_attrs(study: optuna.Study, objective_metrics: list[str], tracking_uri: str) -> None:
    """What `dyrank report` reads from the study; the store's password is never among them."""
    study.set_user_attr("objective_metrics", objective_metrics)
    study.set_user_attr("mlflow_tracking_uri", redact(tracking_uri))


def orphan_callback(found: list[FrozenTrial]):
    """Re-enqueue a failed orphan's parameters (no retry limit: each was interrupted, not faulty)."""
    with warnings.catch_warnings():  # experimental in Optuna 5, and the one public way to re-enqueue a trial as it was
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=None)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial)
        found.append(trial)
    return callback


def recover_orphans(study: optuna.Study, storage, single_driver: bool, callback) -> None:
    """Fail the trials a dead driver left RUNNING and re-enqueue their parameters (see the module doc)."""
    if not single_driver:
        optuna.storages.fail_stale_trials(study)  # heartbeats tell the dead from another driver's live trials
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state_values(trial_id, TrialState.FAIL):
            callback(study, storage.get_trial(trial_id))


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count toward n_trials: finished, pruned, or failed in their own pipeline. An interrupted
    trial (failed by recovery, no FAILURE_ATTR) does not: its re-enqueued copy counts instead."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and FAILURE_ATTR in t.user_attrs) for t in trials)
