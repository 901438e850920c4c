"""`ray job submit` against a real `ray start --head` on loopback, as the README tells users to run it.

The test starts its own head node (tests/support/ray_cluster.py: own RAY_TMPDIR, ports and token) and
ends it through the process group it started: `ray stop` would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.support.ray_cluster import BIN, RayCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head(tmp_path):
    cluster = RayCluster(tmp_path, head_cpus=2)  # token auth on, its own ports and temp dir
    try:
        yield cluster.address, cluster.env
    finally:
        cluster.stop()


def test_ray_job_submit_runs_the_pipeline_into_the_given_store(ray_head, tmp_path):
    address, env = ray_head
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri, "DYRANK_HOME": os.environ["DYRANK_HOME"]}}
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "dyrank", "run", "examples/tiny.yaml", "--set", "baselines.ranks=[2]", "--set", "evaluation.ranks=[1,4,8]"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("dyrank.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    evals = [r for r in runs if r.data.tags.get("dyrank.kind") == "eval"]
    assert sorted(int(r.data.params["rank"]) for r in evals) == [1, 4, 8]
