"""The fidelity block end to end on the tiny model: QDyLoRA and qlora-svd (made from the grid's QLoRA r_max run)
against the QLoRA grid, recorded on the parent run and equal to a hand computation from the recorded per-example
artifacts; the summary and the report show it; smallest-not-worse records its interval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dashboards.report import pipeline_report
from dashboards.summary import write_pipeline_outputs
from orchestrator.pipeline import run_pipeline
from orchestrator.tracking import MlflowTracker
from tests.conftest import temp_tracking_store, tiny_config
from tests.dashboards.report_page import read_report
from tests.orchestrator.test_pipeline import all_runs, children

pytestmark = pytest.mark.slow
GRID = [2, 4]


@pytest.fixture(scope="module")
def fidelity_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fidelity")
    with temp_tracking_store(folder) as uri:
        cfg = tiny_config("training.max_steps=6", "adapter.r_max=4", "evaluation.max_samples=24",
                          "evaluation.bootstrap_samples=200", f"baselines.ranks={GRID}",
                          "baselines.methods=[{method: qlora-svd, r_max: 4}]", "selection.policy=smallest-not-worse",
                          "selection.margin=0.02", "training.eval_every=3", "training.eval_samples=8")
        result = run_pipeline(cfg, write_outputs=write_pipeline_outputs)
    return cfg, uri, result, folder


def per_example(client, run, split, folder, rank=None):
    name = f"per_example/{split}{'' if rank is None else f'_r{rank}'}.npy"
    loss_sum, tokens, _ = np.load(client.download_artifacts(run.info.run_id, name, str(folder)))
    return {"loss_sum": loss_sum, "tokens": tokens}


def loss(cols):
    return cols["loss_sum"].sum() / cols["tokens"].sum()


def smallest_not_worse_by_hand(per_rank, margin, confidence, samples, seed):
    """The policy as selection.smallest-not-worse describes it, computed here with numpy alone: the best rank
    by token-weighted loss (ties to the smaller), then the smallest rank whose paired bootstrap (the same
    resampled examples for both ranks, numpy's default_rng(seed)) puts the `confidence` quantile of
    loss(rank) - loss(best) within margin * loss(best). Returns (rank, best rank, that quantile)."""
    losses = {r: loss(cols) for r, cols in per_rank.items()}
    best = min(losses, key=lambda r: (losses[r], r))
    n = len(per_rank[best]["tokens"])
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))

    def resampled(cols):
        return cols["loss_sum"][idx].sum(axis=1) / cols["tokens"][idx].sum(axis=1)

    for r in sorted(per_rank):
        upper = np.quantile(resampled(per_rank[r]) - resampled(per_rank[best]), confidence)
        if r == best or upper <= margin * losses[best]:
            return r, best, upper


def test_fidelity_block_equals_a_hand_computation_from_the_recorded_per_example_losses(fidelity_run, tmp_path):
    cfg, uri, result, _ = fidelity_run
    client = MlflowClient(uri)
    runs = all_runs(uri, result.parent_run_id)
    parent = client.get_run(result.parent_run_id)
    evals = {int(r.data.params["rank"]): r for r in children(runs, result.parent_run_id, "eval")}
    baselines = {r.info.run_name: r for r in children(runs, result.parent_run_id, "baseline")}
    assert sorted(baselines) == ["qlora-r2", "qlora-r4", "qlora-svd-r4"]
    # qlora-svd stands on the grid's QLoRA r=4 training (no run of its own): that training's costs are its costs
    assert baselines["qlora-svd-r4"].data.metrics["device_seconds"] == baselines["qlora-r4"].data.metrics["device_seconds"]

    dy_val = {r: per_example(client, run, "validation", tmp_path) for r, run in evals.items()}
    dy_test = {r: per_example(client, evals[r], "test", tmp_path) for r in {*GRID, result.selected_rank}}
    q_val = {r: per_example(client, baselines[f"qlora-r{r}"], "validation", tmp_path) for r in GRID}
    q_test = {r: per_example(client, baselines[f"qlora-r{r}"], "test", tmp_path) for r in GRID}
    for r, run in evals.items():  # the arrays are the recorded metrics, example by example
        assert loss(dy_val[r]) == pytest.approx(run.data.metrics["eval_loss"], rel=1e-6)  # fp32 sums, regrouped

    def pick(per_rank):
        s = cfg.selection
        return smallest_not_worse_by_hand(per_rank, s.margin, s.confidence, cfg.evaluation.bootstrap_samples,
                                          cfg.training.seed)

    m = parent.data.metrics
    (grid_pick, _, _), (dy_pick, dy_best, dy_upper) = pick(q_val), pick(dy_val)
    assert (m["fidelity_qdylora_grid_selected_rank"], m["fidelity_qdylora_selected_rank"]) == (grid_pick, dy_pick)
    assert dy_pick == result.selected_rank == parent.data.metrics["best_rank"]
    # the evidence recorded for the choice is the hand computation's
    assert m["selection_not_worse_reference_rank"] == dy_best
    assert m["selection_not_worse_margin"] == pytest.approx(cfg.selection.margin * loss(dy_val[dy_best]), rel=1e-6)
    assert m["selection_not_worse_upper"] == pytest.approx(dy_upper, rel=1e-6, abs=1e-9)
    assert m["fidelity_qdylora_regret"] == pytest.approx(loss(dy_test[dy_pick]) - loss(q_test[grid_pick]), rel=1e-9)
    for r in GRID:
        assert m[f"fidelity_qdylora_delta_r{r}"] == pytest.approx(loss(dy_test[r]) - loss(q_test[r]), rel=1e-9)
        assert m[f"fidelity_qdylora_delta_r{r}_low"] <= m[f"fidelity_qdylora_delta_r{r}"] <= m[f"fidelity_qdylora_delta_r{r}_high"]
    sign = np.sign((loss(dy_val[4]) - loss(dy_val[2])) * (loss(q_val[4]) - loss(q_val[2])))
    assert m["fidelity_qdylora_spearman_on_grid"] == pytest.approx(sign)  # two ranks: +1 or -1
    seconds = {n: r.data.metrics["device_seconds"] for n, r in baselines.items()}
    assert m["fidelity_qdylora_cost_ratio"] == pytest.approx(
        (result.trained["device_seconds"] + sum(r.data.metrics["seconds"] for r in evals.values()))
        / (seconds["qlora-r2"] + seconds["qlora-r4"]), rel=1e-6)

    svd = baselines["qlora-svd-r4"]
    svd_test = {r: per_example(client, svd, "test", tmp_path, r) for r in GRID}
    assert m["fidelity_qlora_svd_delta_r4"] == pytest.approx(loss(svd_test[4]) - loss(q_test[4]), abs=1e-5)
    assert abs(m["fidelity_qlora_svd_delta_r4"]) < 1e-4  # at r_max it is the QLoRA r_max adapter itself
    # qlora-svd is swept on validation at every rank, on test only at the grid and its selected rank (like QDyLoRA)
    svd_val = {r: per_example(client, svd, "validation", tmp_path, r) for r in range(1, 5)}
    svd_pick = pick(svd_val)[0]
    assert m["fidelity_qlora_svd_selected_rank"] == svd_pick
    files = {Path(f.path).name for f in client.list_artifacts(svd.info.run_id, "per_example")}
    assert {f for f in files if f.startswith("test_r")} == {f"test_r{r}.npy" for r in {*GRID, svd_pick}}
    assert {f for f in files if f.startswith("validation_r")} == {f"validation_r{r}.npy" for r in range(1, 5)}

    curve = client.get_metric_history(parent.info.run_id, "curve_qdylora_eval_loss")
    points = sorted((p.step, p.value) for p in curve)
    assert [step for step, _ in points] == sorted(evals)
    assert [value for _, value in points] == pytest.approx([evals[r].data.metrics["eval_loss"] for r in sorted(evals)],
                                                           rel=1e-6)
    block = json.loads(open(client.download_artifacts(parent.info.run_id, "fidelity/fidelity.json", str(tmp_path))).read())
    assert block["grid"] == GRID and set(block["methods"]) == {"qdylora", "qlora-svd"}
    assert m["selection_not_worse_upper"] <= m["selection_not_worse_margin"]


def test_training_probes_are_mlflow_series_of_the_training_run(fidelity_run):
    _, uri, result, _ = fidelity_run
    client = MlflowClient(uri)
    [trained] = children(all_runs(uri, result.parent_run_id), result.parent_run_id, "train")
    for rank in (1, 2, 4):  # r_min, (1 + 4) // 2, r_max
        history = client.get_metric_history(trained.info.run_id, f"val_loss_r{rank}")
        assert sorted(p.step for p in history) == [3, 6]


def test_summary_and_report_show_the_fidelity_block(fidelity_run, tmp_path):
    """The report's fidelity tables and the smallest-not-worse note show the metrics recorded on the parent run
    (the report reads fidelity/fidelity.json; the metrics are logged apart from it)."""
    _, uri, result, _ = fidelity_run
    assert "Fidelity against the QLoRA search on G = [2, 4]" in result.table
    assert "QLoRA-SVD" in result.table and "one-sided bound" in result.table
    m = MlflowClient(uri).get_run(result.parent_run_id).data.metrics
    page = read_report(pipeline_report(MlflowTracker(uri), result.parent_run_id, tmp_path / "report").html)
    assert "Fidelity: does the one run pick the rank the QLoRA search would?" in page.headings

    def interval(name):
        return f"{m[name]:+.4f} [{m[name + '_low']:+.4f}, {m[name + '_high']:+.4f}]"

    [summary] = [t for t in page.tables if t[0][0] == "method" and "regret [95%]" in t[0]]
    rows = {row[0]: dict(zip(summary[0], row)) for row in summary[1:]}
    assert list(rows) == ["QDyLoRA", "QLoRA-SVD"]
    dy = rows["QDyLoRA"]
    assert (int(dy["selected"]), int(dy["QLoRA search"])) == (m["fidelity_qdylora_selected_rank"],
                                                              m["fidelity_qdylora_grid_selected_rank"])
    assert dy["regret [95%]"] == interval("fidelity_qdylora_regret")
    assert dy["spearman on G"] == f"{m['fidelity_qdylora_spearman_on_grid']:.3f}"
    assert dy["cost ratio"] == f"{m['fidelity_qdylora_cost_ratio']:.3f}"
    [deltas] = [t for t in page.tables if t[0] == ["method", "rank", "method - QLoRA on test [95%]"]]
    assert deltas[1:] == [[name, str(r), interval(f"fidelity_{key}_delta_r{r}")]
                          for name, key in (("QDyLoRA", "qdylora"), ("QLoRA-SVD", "qlora_svd")) for r in GRID]
    [note] = [n for n in page.notes if n.startswith("smallest-not-worse:")]
    assert note == (f"smallest-not-worse: rank {result.selected_rank} minus best rank "
                    f"{int(m['selection_not_worse_reference_rank'])} on validation {m['selection_not_worse_diff']:+.4f} "
                    f"[{m['selection_not_worse_low']:+.4f}, {m['selection_not_worse_high']:+.4f}], one-sided bound "
                    f"{m['selection_not_worse_upper']:+.4f} <= margin {m['selection_not_worse_margin']:.4f}")
