"""Training progress from trainer actors to the study driver, and the driver's word to stop.

Trainers never touch Optuna's storage (the driver is its only writer): each training step's metrics go
to one small `ProgressBoard` actor; the driver drains the board, reports intermediate values to Optuna
and, for a pruned trial, marks it stopped on the board, which the trainer sees at its next step.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self):
        self.rows: dict[str, list[dict]] = {}
        self.stopped: set[str] = set()

    def report(self, key: str, row: dict) -> bool:
        self.rows.setdefault(key, []).append(row)
        return key in self.stopped

    def drain(self) -> dict[str, list[dict]]:
        rows, self.rows = self.rows, {}
        return rows

    def stop(self, key: str) -> None:
        self.stopped.add(key)


class StepSink:
    """What a trainer calls each step (picklable: it travels to the actor). True means stop."""

    def __init__(self, board, key: str):
        self.board, self.key = board, key

    def __call__(self, row: dict) -> bool:
        return ray.get(self.board.report.remote(self.key, row))
