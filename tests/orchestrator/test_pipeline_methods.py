"""All methods in one tiny pipeline (examples/methods-tiny.yaml): each a baseline job on its own trainer, scored
by the evaluators' code, recorded with the same params and cost metrics, side by side in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from dashboards.summary import write_pipeline_outputs
from orchestrator.pipeline import run_pipeline
from tests.conftest import temp_tracking_store
from tests.orchestrator.test_pipeline import all_runs, children

pytestmark = pytest.mark.slow
METHODS_YAML = Path(__file__).resolve().parents[2] / "examples" / "methods-tiny.yaml"
COSTS = {"trainable_params", "adapter_bytes", "peak_memory_bytes", "device_seconds", "step_seconds"}


@pytest.fixture(scope="module")
def methods_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods")
    with temp_tracking_store(folder) as uri:
        # Half the example's 20 steps: enough for AdaLoRA to reach its budget (tinit 2, tfinal 4) and GaLore to
        # refresh its projection (every 5); what is checked is recording and costs, not how far the loss falls.
        cfg = load_config(METHODS_YAML, ["training.max_steps=10"])
        result = run_pipeline(cfg, write_outputs=write_pipeline_outputs)
    return cfg, uri, result, all_runs(uri, result.parent_run_id)


def test_every_method_is_a_recorded_baseline_with_the_same_params_and_costs(methods_pipeline):
    cfg, uri, result, runs = methods_pipeline
    baselines = {r.info.run_name: r for r in children(runs, result.parent_run_id, "baseline")}
    assert sorted(baselines) == sorted(job.name for job in cfg.baseline_jobs())
    methods = {r.data.params["method"] for r in baselines.values()}
    assert methods == {"qlora", "lora", "dylora", "adalora", "bitlora", "galore", "galore8bit"}
    for name, run in baselines.items():
        m = run.data.metrics
        assert run.info.status == "FINISHED", name
        assert {"eval_loss", "test_loss", "test_gen_exact_match", *COSTS} <= m.keys(), name
        assert m["trainable_params"] > 0 and m["adapter_bytes"] > 0 and m["step_seconds"] > 0, name
    assert baselines["adalora-r2"].data.params["rank"] == "2"
    assert baselines["galore-r128"].data.params["rank"] == "128"
    # full-parameter methods train every weight and save all of them: far more than any adapter
    adapters = [r.data.metrics["adapter_bytes"] for n, r in baselines.items() if not n.startswith("galore")]
    assert baselines["galore-r128"].data.metrics["adapter_bytes"] > 4 * max(adapters)
    assert baselines["galore-r128"].data.metrics["trainable_params"] == baselines["galore8bit-r128"].data.metrics["trainable_params"]
    parent = next(r for r in runs if r.info.run_id == result.parent_run_id)
    best = min(baselines.values(), key=lambda r: r.data.metrics["eval_loss"])
    assert parent.data.tags["dyrank.best_baseline"] == best.info.run_name
    [train] = children(runs, result.parent_run_id, "train")
    assert COSTS <= train.data.metrics.keys() and train.data.params["method"] == "qdylora"


def test_adalora_run_keeps_its_final_rank_allocation(methods_pipeline, tmp_path):
    _, uri, result, runs = methods_pipeline
    [adalora] = [r for r in children(runs, result.parent_run_id, "baseline") if r.data.params["method"] == "adalora"]
    path = MlflowClient(uri).download_artifacts(adalora.info.run_id, "rank_allocation.json", str(tmp_path))
    allocation = json.loads(Path(path).read_text())
    assert len(allocation) == 14 and sum(allocation.values()) == 2 * 14


def test_report_shows_the_methods_side_by_side(methods_pipeline):
    """The summary's baseline rows and cost rows show each job's recorded MLflow metrics, every method once."""
    _, _, result, runs = methods_pipeline
    baselines = children(runs, result.parent_run_id, "baseline")
    [train] = children(runs, result.parent_run_id, "train")
    ranks, costs = result.table.split("\n\n")[:2]
    lines = ranks.splitlines()
    separators = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    shown = [line.split() for line in lines[separators[1] + 1:-1]]  # the baselines' rows, below the swept ranks
    shown = [(row[0], int(row[1]), row[2]) for row in shown]
    assert [(m, r) for m, r, _ in shown] == sorted((m, r) for m, r, _ in shown)  # by method, then rank
    assert sorted(shown) == sorted((r.data.params["method"], int(r.data.params["rank"]), f"{r.data.metrics['eval_loss']:.4f}")
                                   for r in baselines)

    header, _, *rows = costs.splitlines()
    assert header.split()[:3] == ["method", "rank", "trainable"]
    jobs = [train, *baselines]
    want = sorted((r.data.params["method"], r.data.params["rank"], str(int(r.data.metrics["trainable_params"])),
                   f"{r.data.metrics['adapter_bytes'] / 1024:.1f}", f"{r.data.metrics['step_seconds']:.3f}") for r in jobs)
    assert sorted((row[0], row[1], row[2], row[3], row[5]) for row in map(str.split, rows)) == want
    assert {row.split()[0] for row in rows} == {"qdylora", "qlora", "lora", "dylora", "adalora", "bitlora", "galore",
                                                 "galore8bit"}
