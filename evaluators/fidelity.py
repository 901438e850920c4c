"""Does one run pick the rank a full search would? Fidelity of a one-run method (QDyLoRA, qlora-svd) against a
QLoRA grid, from per-example values alone: pure functions, no model, so a recorded run can be re-read and checked.

The grid G is the ranks both sides scored. Per-example columns are what evaluators/metrics.py `evaluate` records
("loss_sum", "tokens", "exact"), on the same examples for both sides, so every comparison is paired
(evaluators/bootstrap.py `paired_difference`). Regret and per-rank deltas are on test loss: the number a user
pays; the selections themselves are made on validation by the pipeline's own policy, the same for both sides.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from evaluators.bootstrap import column_metric, example_statistic, paired_difference

PerExample = Mapping[str, Sequence[float]]  # one split's per-example columns of one model
# A rank selection over per-example values: (rank -> columns) -> the chosen rank (the pipeline's policy).
Selector = Callable[[Mapping[int, PerExample]], int]


def metric_value(columns: PerExample, metric: str = "eval_loss") -> float:
    """The aggregate a sweep row holds, recomputed from its per-example columns (token-weighted loss, mean match,
    perplexity as exp(loss) like evaluators/metrics.py)."""
    if metric.endswith("_perplexity"):
        return math.exp(min(metric_value(columns, metric.removesuffix("perplexity") + "loss"), 700.0))
    return float(column_metric({k: np.asarray(columns[k], dtype=np.float64) for k in example_statistic(metric)}))


def rows_from(per_rank: Mapping[int, PerExample], metric: str = "eval_loss") -> list[dict]:
    """Sweep-shaped rows ({"rank", metric}) from per-example values: what a selection policy reads."""
    return [{"rank": r, metric: metric_value(cols, metric)} for r, cols in sorted(per_rank.items())]


def common_grid(baseline_ranks: Sequence[int], swept_ranks: Sequence[int]) -> list[int]:
    """G: the QLoRA baseline ranks the one-run method's sweep also covers (fidelity needs two or more)."""
    return sorted(set(baseline_ranks) & set(swept_ranks))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks, ties sharing their average rank (scipy.stats.spearmanr's
    definition). NaN when either side is constant: no ordering to agree with."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of 2+ values, got {len(x)} and {len(y)}")

    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(values, kind="stable")
        out = np.empty(len(values))
        out[order] = np.arange(1, len(values) + 1)
        for v in np.unique(values):  # ties: each gets the mean of the positions they span
            out[values == v] = out[values == v].mean()
        return out

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def log2_distance(rank_a: int, rank_b: int) -> float:
    """|log2(a) - log2(b)|: 1.0 means one selected rank is twice the other, whatever their size."""
    return abs(math.log2(rank_a) - math.log2(rank_b))


def compare_to_grid(one_run_val: Mapping[int, PerExample], one_run_test: Mapping[int, PerExample],
                    grid_val: Mapping[int, PerExample], grid_test: Mapping[int, PerExample], select: Selector, *,
                    metric: str = "eval_loss", samples: int = 1000, seed: int = 0,
                    one_run_seconds: float | None = None, grid_seconds: float | None = None) -> dict:
    """The fidelity block of one one-run method against the QLoRA grid.

    `one_run_val` holds every rank the method swept (validation); `one_run_test` at least G and its selected rank;
    `grid_val` / `grid_test` the QLoRA baselines of G. Returns JSON-able data: selected ranks, regret (restricted to
    G and unrestricted) with paired intervals, Spearman of the validation curves on G, log2 rank distance, per-rank
    test deltas on G with paired intervals, cost ratio (one_run_seconds / grid_seconds) and the curves."""
    grid = common_grid(grid_val, one_run_val)
    if len(grid) < 2:
        raise ValueError(f"fidelity needs 2+ QLoRA ranks the sweep also covers; the grid is {grid}")
    missing = [r for r in grid if r not in grid_test or r not in one_run_test]
    if missing:
        raise ValueError(f"test per-example values missing at grid ranks {missing}")
    grid_pick = select({r: grid_val[r] for r in grid})
    pick = select(one_run_val)
    pick_on_grid = select({r: one_run_val[r] for r in grid})
    if pick not in one_run_test:
        raise ValueError(f"test per-example values missing at the selected rank {pick}")

    def delta(a: PerExample, b: PerExample) -> dict:
        d = paired_difference(a, b, "test_loss", samples, seed)
        return {"diff": d["diff"], "low": d["low"], "high": d["high"]}

    val_curve = [metric_value(one_run_val[r], metric) for r in grid]
    grid_curve = [metric_value(grid_val[r], metric) for r in grid]
    block = {
        "grid": grid, "metric": metric,
        "grid_selected_rank": grid_pick, "selected_rank": pick, "selected_rank_on_grid": pick_on_grid,
        # Regret: what choosing by the one run costs on test against what the grid search would have chosen.
        "regret": delta(one_run_test[pick], grid_test[grid_pick]),
        "regret_on_grid": delta(one_run_test[pick_on_grid], grid_test[grid_pick]),
        "spearman_on_grid": spearman(val_curve, grid_curve),
        "log2_rank_distance": log2_distance(pick, grid_pick),
        "log2_rank_distance_on_grid": log2_distance(pick_on_grid, grid_pick),
        "per_rank": {r: delta(one_run_test[r], grid_test[r]) for r in grid},
        "curves": {
            "validation": {r: metric_value(cols, metric) for r, cols in sorted(one_run_val.items())},
            "test": {r: metric_value(cols, "test_loss") for r, cols in sorted(one_run_test.items())},
            "grid_validation": {r: metric_value(grid_val[r], metric) for r in grid},
            "grid_test": {r: metric_value(grid_test[r], "test_loss") for r in grid},
        },
    }
    if one_run_seconds is not None and grid_seconds:
        block["cost_ratio"] = one_run_seconds / grid_seconds
    return block


def fidelity_metrics(block: dict, prefix: str) -> dict[str, float]:
    """The block's numbers as flat MLflow metrics named `{prefix}...` (e.g. fidelity_qdylora_regret)."""
    out = {f"{prefix}grid_selected_rank": block["grid_selected_rank"], f"{prefix}selected_rank": block["selected_rank"],
           f"{prefix}selected_rank_on_grid": block["selected_rank_on_grid"],
           f"{prefix}spearman_on_grid": block["spearman_on_grid"],
           f"{prefix}log2_rank_distance": block["log2_rank_distance"],
           f"{prefix}log2_rank_distance_on_grid": block["log2_rank_distance_on_grid"]}
    for name in ("regret", "regret_on_grid"):
        out.update({f"{prefix}{name}{'' if k == 'diff' else '_' + k}": v for k, v in block[name].items()})
    for rank, d in block["per_rank"].items():
        out.update({f"{prefix}delta_r{rank}{'' if k == 'diff' else '_' + k}": v for k, v in d.items()})
    if "cost_ratio" in block:
        out[f"{prefix}cost_ratio"] = block["cost_ratio"]
    return out
