"""A pipeline's child runs in MLflow: which work an earlier driver finished, and recording each new result once.

Child runs are keyed by `JobKey` (orchestrator/messages.py). FINISHED ones are done work; a RUNNING one (a driver
died while writing it) is reused rather than duplicated; a FAILED one is kept as the record of that failure.
A child run is created only once its result is in, so a resumed pipeline never records anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from orchestrator import tags
from orchestrator.messages import JobKey, Placement
from orchestrator.provenance import provenance_tags
from orchestrator.tracking import Tracker
from trainers.validation_probe import PREFIX as PROBE_PREFIX

# metrics.jsonl keys -> the MLflow series names of a training run
TRAIN_SERIES = {"train_loss": "train_loss", "rank": "sampled_rank", "lr": "lr", "grad_norm": "grad_norm",
                "torch_threads": "torch_threads"}  # threads change when other jobs finish (actors.py set_threads)


@dataclass
class Recorded:
    """A finished child run and its result row ({"rank": ..., metrics}), without reading MLflow back."""

    run_id: str
    row: dict


def series_rows(step_rows: Iterable[dict]) -> list[dict]:
    return [{TRAIN_SERIES.get(k, k): v for k, v in row.items()} for row in step_rows]


class RunRecords:
    def __init__(self, tracker: Tracker, experiment_id: str, parent_id: str):
        self.tracker, self.experiment_id, self.parent_id = tracker, experiment_id, parent_id
        self.existing: dict[JobKey, object] = {}
        self.done: dict[JobKey, Recorded] = {}

    def load(self) -> None:
        """Read the child runs an earlier driver left under the parent."""
        for run in self.tracker.children(self.parent_id):
            key = JobKey.of_run(run)
            self.existing[key] = run
            if run.info.status == "FINISHED":
                rank = run.data.params.get("rank", run.data.tags.get(tags.RANK_TAG))
                row = {"rank": int(rank) if rank is not None else None, **run.data.metrics}
                if key.kind == "baseline":
                    row.update(method=run.data.params.get("method"), job=run.info.run_name)
                self.done[key] = Recorded(run.info.run_id, row)

    def __contains__(self, key: JobKey) -> bool:
        return key in self.done

    def __getitem__(self, key: JobKey) -> Recorded:
        return self.done[key]

    def rows(self, kind: str) -> dict:
        """{key id: row} of the finished runs of one kind."""
        return {key.id: done.row for key, done in self.done.items() if key.kind == kind}

    def record(self, key: JobKey, name: str, method: str, rank: int | None, placement: Placement, start: float,
               end: float, metrics: dict, step_rows: Iterable[dict] = (), params: dict | None = None) -> str:
        """Create (or reuse, if an interrupted driver left it RUNNING) the child run for one result and finish it."""
        existing = self.existing.get(key)
        if existing is not None and existing.info.status != "RUNNING":
            existing = None
        run_tags = placement.tags()
        params = {"method": method, **{k: v for k, v in (params or {}).items() if v is not None}}
        if rank is not None:
            # Also a tag, written with the run itself: a driver killed before the params were written
            # leaves a run that `dyrank resume` still recognises (and completes) instead of duplicating.
            params["rank"] = run_tags[tags.RANK_TAG] = rank
        if existing is not None:
            run_id = existing.info.run_id
            self.tracker.set_tags(run_id, run_tags)
        else:
            run_id = self.tracker.create_run(self.experiment_id, key.kind, name, self.parent_id, None, run_tags, start)
        rows = series_rows(step_rows)
        if rows:  # plus the training's validation probes (trainers/validation_probe.py), on the steps they ran
            probes = sorted({k for row in rows for k in row if k.startswith(PROBE_PREFIX)})
            self.tracker.log_series(run_id, rows, [*TRAIN_SERIES.values(), *probes])
        self.tracker.log(run_id, params, metrics)  # on a reused run: the same values again, which MLflow accepts
        self.tracker.finish(run_id, end)
        row = {"rank": rank, **metrics}
        if key.kind == "baseline":
            row.update(method=method, job=name)
        self.done[key] = Recorded(run_id, row)
        return run_id

    def record_failure(self, kind: str, rank: int | None, reason: str) -> str:
        """A FAILED child run that says why (the work it stands for never produced a result)."""
        run_id = self.tracker.create_run(self.experiment_id, kind, f"{kind}-failed", self.parent_id,
                                         {"rank": rank} if rank is not None else None, provenance_tags())
        self.tracker.fail(run_id, reason)
        return run_id
