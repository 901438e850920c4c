"""An evaluator pool past two actors, sized (num_evaluators unset) by what the Ray cluster's CPUs fit: every
actor of the pool is started, the work lands only on them, and every rank is recorded once."""

from __future__ import annotations

import json

import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.pipeline import Pipeline, run_pipeline
from orchestrator.tags import EVALUATOR_BASE_LOADS_TAG
from tests.conftest import tiny_config
from tests.orchestrator.test_pipeline import all_runs, assert_every_rank_once, children, tracking  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
CHEAP = ("training.max_steps=4", "training.checkpoint_every=4", "baselines.ranks=[]", "evaluation.max_samples=8",
         "adapter.r_max=6", "resources.trainer_cpus=0.5", "resources.evaluator_cpus=0.5")


def test_auto_sized_pool_of_four_evaluators_shares_the_sweep(tracking, monkeypatch):
    """num_evaluators unset: 2 CPUs / 0.5 per evaluator = 4 actors, fewer than the 6 ranks. (A set size is
    min(num_evaluators, ranks): the tiny pipeline tests run it with 1 and 2.)"""
    expected = 4
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    cfg = tiny_config(*CHEAP, "resources.num_evaluators=null")
    assert cfg.resources.num_evaluators is None
    started, pools = Pipeline.start_evaluators, []

    def start_and_note(self, n):  # evaluators are released as their work runs out: note the pool as it starts
        pool = started(self, n)
        pools.append({actor._actor_id.hex() for actor in pool})
        return pool
    monkeypatch.setattr(Pipeline, "start_evaluators", start_and_note)

    result = run_pipeline(cfg)
    [pool] = pools
    assert len(pool) == expected, pool
    runs = all_runs(tracking, result.parent_run_id)
    assert_every_rank_once(runs, result.parent_run_id, range(1, 7))
    used = {r.data.tags["dyrank.actor_id"] for r in children(runs, result.parent_run_id, "eval")}
    assert used <= pool, "a rank was scored outside the pool"
    loads = json.loads(MlflowClient(tracking).get_run(result.parent_run_id).data.tags[EVALUATOR_BASE_LOADS_TAG])
    assert loads == {actor: 1 for actor in pool}, "every evaluator of the pool started and loaded the base once"
