"""Per-example values survive the driver: logged once per run and split as a .npy artifact, read back by a resumed
pipeline (a fresh store) from MLflow, unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.fidelity_stage import PerExampleStore
from orchestrator.messages import JobKey
from orchestrator.run_records import Recorded
from orchestrator.tracking import MlflowTracker


def test_a_fresh_store_reads_the_recorded_arrays_back(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.create_run(tracker.experiment_id("store"), "eval", "rank-2")
    records = {JobKey("eval", 2): Recorded(run_id, {"rank": 2})}
    columns = {"loss_sum": [1.5, 0.25, 3.0], "tokens": [2.0, 1.0, 4.0], "exact": [1.0, 0.0, 0.0]}
    PerExampleStore(tracker, records, tmp_path / "first").put(JobKey("eval", 2), "validation", columns)
    PerExampleStore(tracker, records, tmp_path / "first").put(JobKey("eval", 2), "test", columns, rank=2)

    resumed = PerExampleStore(tracker, records, tmp_path / "resumed")  # nothing in memory: from the store
    for split, rank in (("validation", None), ("test", 2)):
        back = resumed.get(JobKey("eval", 2), split, rank)
        assert {k: list(v) for k, v in back.items()} == columns
    with pytest.raises(LookupError, match="per_example/test.npy"):
        resumed.get(JobKey("eval", 2), "test")
    assert np.load(tmp_path / "first" / run_id / "validation.npy").shape == (3, 3)
