"""An evaluator pool past two actors, sized (num_evaluators unset) by what the Ray cluster's CPUs fit: every
actor of the pool is started, the work lands only on them, and every rank is recorded once."""

from __future__ import annotations

import pytest
import ray

from orchestrator.pipeline import run_pipeline
from tests.conftest import tiny_config
from tests.orchestrator.test_pipeline import all_runs, assert_every_rank_once, children, tracking  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
CHEAP = ("training.max_steps=4", "training.checkpoint_every=4", "baselines.ranks=[]", "evaluation.max_samples=8",
         "adapter.r_max=6", "resources.trainer_cpus=0.5", "resources.evaluator_cpus=0.5")


def _pool_of(parent_id: str) -> dict[str, int]:
    """actor id -> index of each evaluator the pipeline named for itself (RankEvaluator-<parent>-<i>)."""
    found = {}
    for index in range(16):
        try:
            actor = ray.get_actor(f"RankEvaluator-{parent_id[:12]}-{index}")
        except ValueError:
            continue
        found[actor._actor_id.hex()] = index
    return found


def test_auto_sized_pool_of_four_evaluators_shares_the_sweep(tracking):
    """num_evaluators unset: 2 CPUs / 0.5 per evaluator = 4 actors, fewer than the 6 ranks. (A set size is
    min(num_evaluators, ranks): the tiny pipeline tests run it with 1 and 2.)"""
    expected = 4
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    cfg = tiny_config(*CHEAP, "resources.num_evaluators=null")
    assert cfg.resources.num_evaluators is None
    parent, pools = [], []

    def on_event(kind, payload):
        if kind == "started":
            parent.append(payload["parent_run_id"])
        if kind == "trained":  # the pool was started beside the trainer: all of it exists by now
            pools.append(_pool_of(parent[0]))

    result = run_pipeline(cfg, on_event=on_event)
    [pool] = pools
    assert sorted(pool.values()) == list(range(expected)), pool
    runs = all_runs(tracking, result.parent_run_id)
    assert_every_rank_once(runs, result.parent_run_id, range(1, 7))
    used = {r.data.tags["dyrank.actor_id"] for r in children(runs, result.parent_run_id, "eval")}
    assert used <= pool.keys(), "a rank was scored outside the pool"
