"""Fidelity metrics (evaluators/fidelity.py) equal a hand computation from per-example losses."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from evaluators.bootstrap import paired_difference
from evaluators.fidelity import compare_to_grid, fidelity_metrics, rows_from, spearman
from evaluators.selection import select_rank


def columns(loss_sums, tokens):
    return {"loss_sum": list(map(float, loss_sums)), "tokens": list(map(float, tokens)),
            "exact": [0.0] * len(tokens)}


def hand_loss(cols):
    return sum(cols["loss_sum"]) / sum(cols["tokens"])


def best(per_rank):
    return select_rank(rows_from(per_rank))["rank"]


def test_paired_difference_is_the_difference_of_token_weighted_losses_with_a_paired_interval():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 6, 40)
    a, b = columns(rng.uniform(0, 3, 40) * tokens, tokens), columns(rng.uniform(0, 3, 40) * tokens, tokens)
    d = paired_difference(a, b, "eval_loss", samples=200, seed=3)
    assert d["diff"] == pytest.approx(hand_loss(a) - hand_loss(b), rel=1e-12)
    # By hand: the same resampled examples for both sides.
    idx = np.random.default_rng(3).integers(0, 40, size=(200, 40))
    la, lb, t = (np.asarray(c) for c in (a["loss_sum"], b["loss_sum"], a["tokens"]))
    draws = [la[i].sum() / t[i].sum() - lb[i].sum() / t[i].sum() for i in idx]
    assert (d["low"], d["high"]) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), rel=1e-12)
    assert d["upper"] == pytest.approx(np.quantile(draws, 0.95), rel=1e-12)


def test_paired_difference_refuses_unpaired_examples():
    with pytest.raises(ValueError, match="same, non-empty examples"):
        paired_difference(columns([1, 2], [1, 1]), columns([1], [1]))


def test_spearman_matches_scipy_with_ties():
    x, y = [3.0, 1.0, 2.0, 2.0, 5.0], [2.5, 0.1, 0.3, 0.9, 0.2]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    assert math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))


def make_tables():
    """QDyLoRA swept at 1..8, QLoRA at 2, 4, 8: per-example losses built so the selections differ."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 5, 30)
    noise = rng.uniform(0, 0.2, 30)

    def at(level):
        return columns((level + noise) * tokens, tokens)

    dy_val = {r: at(level) for r, level in zip(range(1, 9), [2.0, 1.5, 1.4, 1.1, 1.2, 1.3, 1.35, 1.45])}
    # test ranks the grid ranks differently from validation: Spearman must read the validation curves
    dy_test = {r: at(level) for r, level in zip(range(1, 9), [2.0, 1.2, 1.5, 1.1, 1.3, 1.25, 1.35, 1.4])}
    q_val = {2: at(1.6), 4: at(1.3), 8: at(1.0)}
    q_test = {2: at(1.62), 4: at(1.33), 8: at(1.02)}
    return dy_val, dy_test, q_val, q_test


def test_fidelity_block_equals_a_hand_computation():
    dy_val, dy_test, q_val, q_test = make_tables()
    block = compare_to_grid(dy_val, dy_test, q_val, q_test, best, samples=300, seed=5,
                            one_run_seconds=30.0, grid_seconds=120.0)
    assert block["grid"] == [2, 4, 8]
    assert (block["selected_rank"], block["selected_rank_on_grid"], block["grid_selected_rank"]) == (4, 4, 8)
    assert block["regret"]["diff"] == pytest.approx(hand_loss(dy_test[4]) - hand_loss(q_test[8]), rel=1e-12)
    assert block["regret_on_grid"]["diff"] == pytest.approx(hand_loss(dy_test[4]) - hand_loss(q_test[8]), rel=1e-12)
    for r in (2, 4, 8):
        d = block["per_rank"][r]
        assert d["diff"] == pytest.approx(hand_loss(dy_test[r]) - hand_loss(q_test[r]), rel=1e-12)
        assert d["low"] <= d["diff"] <= d["high"]
    hand_rho = spearmanr([hand_loss(dy_val[r]) for r in (2, 4, 8)], [hand_loss(q_val[r]) for r in (2, 4, 8)])
    assert block["spearman_on_grid"] == pytest.approx(hand_rho.statistic)
    assert block["log2_rank_distance"] == pytest.approx(1.0)  # 4 vs 8
    assert block["cost_ratio"] == pytest.approx(0.25)
    metrics = fidelity_metrics(block, "fidelity_qdylora_")
    assert metrics["fidelity_qdylora_regret"] == block["regret"]["diff"]
    assert metrics["fidelity_qdylora_delta_r2_high"] == block["per_rank"][2]["high"]


def test_unrestricted_selection_can_leave_the_grid():
    dy_val, dy_test, q_val, q_test = make_tables()
    dy_val[3] = columns(np.asarray(dy_val[3]["tokens"]) * 0.5, dy_val[3]["tokens"])  # rank 3 now best, off-grid
    block = compare_to_grid(dy_val, dy_test, q_val, q_test, best, samples=100)
    assert (block["selected_rank"], block["selected_rank_on_grid"]) == (3, 4)
    assert block["regret"]["diff"] == pytest.approx(hand_loss(dy_test[3]) - hand_loss(q_test[8]), rel=1e-12)
    assert block["regret_on_grid"]["diff"] == pytest.approx(hand_loss(dy_test[4]) - hand_loss(q_test[8]), rel=1e-12)
    assert block["log2_rank_distance"] == pytest.approx(math.log2(8 / 3))
    assert block["log2_rank_distance_on_grid"] == pytest.approx(1.0)


def test_a_grid_of_one_rank_is_refused():
    dy_val, dy_test, q_val, q_test = make_tables()
    with pytest.raises(ValueError, match="2\\+ QLoRA ranks"):
        compare_to_grid(dy_val, dy_test, {8: q_val[8]}, {8: q_test[8]}, best)
