"""`dyrank report RUN_ID|STUDY_NAME`: one self-contained HTML file under ./reports/, PNGs beside it.

A pipeline run id gives that pipeline's report; a study name (or a study run's id) gives the study's
plots followed by its best trial's pipeline. The study's MLflow store is the one its driver recorded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import optuna

from dashboards.html import Page
from dashboards.pipeline_report import add_pipeline_section, load_pipeline
from orchestrator.errors import UsageError
from orchestrator.redact import is_redacted, redact
from orchestrator.study_config import parse_storage_url
from orchestrator.study_storage import open_storage
from orchestrator.tags import KIND_TAG, STUDY_TAG
from orchestrator.tracking import RUN_ID, MlflowTracker, Tracker, check_reachable, open_run, resolve_tracking_uri

TRACKING_ATTR = "mlflow_tracking_uri"  # set on the study by its driver


@dataclass
class Report:
    html: Path
    pngs: list[Path]


def default_storage() -> str:
    return f"sqlite:///{(Path.cwd() / 'optuna.db').resolve()}"


def _load_study(name: str, storage: str) -> optuna.Study | None:
    try:
        _, file = parse_storage_url(storage)
    except ValueError as exc:
        raise UsageError(f"--storage: {exc}") from None
    if file is not None and not file.is_file():  # opening a missing file would create an empty store
        return None
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage, 60, None)[0])
    except KeyError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "report"


def pipeline_report(tracker: Tracker, run_id: str, out_dir: Path) -> Report:
    data = load_pipeline(tracker, run_id)
    name = _slug(f"{data.run.info.run_name}-{run_id[:8]}")
    page = Page(f"dyrank pipeline {data.run.info.run_name}")
    pngs = add_pipeline_section(page, data, out_dir / name, "Pipeline")
    return Report(page.write(out_dir / f"{name}.html"), pngs)


def study_report(study: optuna.Study, tracker: Tracker, out_dir: Path) -> Report:
    from dashboards.study_report import add_study_section

    names = study.user_attrs.get("objective_metrics") or [f"objective {i}" for i in range(len(study.directions))]
    name = _slug(study.study_name)
    page = Page(f"dyrank study {study.study_name}")
    pngs = add_study_section(page, study, names, out_dir / name)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = ([study.best_trial] if len(study.directions) == 1 else study.best_trials) if complete else []
    if best and best[0].user_attrs.get("mlflow_run_id"):
        data = load_pipeline(tracker, best[0].user_attrs["mlflow_run_id"])
        pngs += add_pipeline_section(page, data, out_dir / name / "best", f"Best trial {best[0].number}: its pipeline")
    elif not complete:
        page.note("no trial has finished yet")
    return Report(page.write(out_dir / f"{name}.html"), pngs)


def write_report(target: str, tracking_uri: str | None = None, storage: str | None = None,
                 out_dir: str | Path = "reports") -> Report:
    out_dir = Path(out_dir).resolve()
    storage = storage or default_storage()
    if RUN_ID.fullmatch(target):
        tracker, run = open_run(target, tracking_uri)
        kind = run.data.tags.get(KIND_TAG)
        if kind == "pipeline":
            return pipeline_report(tracker, target, out_dir)
        if kind == "study":
            target = run.data.tags[STUDY_TAG]
        else:
            raise UsageError(f"run {target} is a {kind} run; give a pipeline run id, a study run id or a study name")
    study = _load_study(target, storage)
    if study is None:
        raise UsageError(f"no study {target!r} in {redact(storage)} (and not a run id); pass --storage or a pipeline run id")
    # An explicit --tracking-uri, else the store the study's driver recorded (absolute), else the usual default.
    # A recorded store with a password was recorded masked: then it must come from --tracking-uri or the env.
    recorded = study.user_attrs.get(TRACKING_ATTR)
    if not tracking_uri and is_redacted(recorded):
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise UsageError(f"study {target!r} records its MLflow store as {recorded} (password not recorded); "
                             "pass --tracking-uri or MLFLOW_TRACKING_URI")
        recorded = None
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri else recorded or resolve_tracking_uri(None)
    check_reachable(uri)
    return study_report(study, MlflowTracker(uri), out_dir)
