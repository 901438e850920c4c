"""select_rank: both policies, both metric directions, ties, tolerance edges, bad input."""

import pytest

from evaluators.selection import select_rank


def rows(values: dict[int, float], metric: str = "eval_loss") -> list[dict]:
    return [{"rank": r, metric: v} for r, v in values.items()]


def test_best_lower_is_better():
    assert select_rank(rows({1: 2.0, 2: 1.5, 4: 1.2, 8: 1.3}))["rank"] == 4


def test_best_greater_is_better():
    results = rows({1: 0.2, 2: 0.6, 4: 0.5}, "eval_exact_match")
    assert select_rank(results, metric="eval_exact_match", greater_is_better=True)["rank"] == 2


def test_best_tie_goes_to_smaller_rank_whatever_the_order():
    assert select_rank(rows({8: 1.0, 2: 1.0, 4: 1.0}))["rank"] == 2
    assert select_rank(rows({8: 0.9, 4: 0.9, 1: 0.1}, "acc"), metric="acc", greater_is_better=True)["rank"] == 4


def test_returns_the_row_itself():
    results = rows({1: 2.0, 2: 1.0})
    assert select_rank(results) is results[1]


def test_smallest_within_lower_is_better():
    results = rows({8: 1.0, 4: 1.005, 2: 1.015, 1: 1.10})
    pick = lambda tol: select_rank(results, policy="smallest-within", tolerance=tol)["rank"]
    assert pick(0.0) == 8
    assert pick(0.01) == 4   # bound 1.01
    assert pick(0.02) == 2   # bound 1.02
    assert pick(0.5) == 1


def test_smallest_within_greater_is_better():
    results = rows({1: 0.50, 2: 0.79, 4: 0.80, 8: 0.81}, "em")
    pick = lambda tol: select_rank(results, metric="em", policy="smallest-within", tolerance=tol,
                                   greater_is_better=True)["rank"]
    assert pick(0.0) == 8
    assert pick(0.02) == 4   # bound 0.81 * 0.98 = 0.7938
    assert pick(0.03) == 2   # bound 0.7857
    assert pick(0.9) == 1


def test_smallest_within_value_exactly_on_the_bound_is_within():
    # 2.0 * 1.01 is not exactly 2.02 in floating point; the policy must still count it as within.
    assert select_rank(rows({1: 2.02, 8: 2.0}), policy="smallest-within", tolerance=0.01)["rank"] == 1


def test_smallest_within_negative_best_loosens_the_bound():
    # Lower is better, best -10: 1% slack allows up to -9.9 (best*(1+tol) = -10.1 would exclude the best itself).
    results = rows({1: -9.85, 2: -9.95, 8: -10.0}, "score")
    assert select_rank(results, metric="score", policy="smallest-within", tolerance=0.01)["rank"] == 2
    # Greater is better, best -1: 10% slack allows down to -1.1.
    results = rows({1: -1.2, 2: -1.05, 8: -1.0}, "loglik")
    assert select_rank(results, metric="loglik", policy="smallest-within", tolerance=0.1,
                       greater_is_better=True)["rank"] == 2


def test_smallest_within_zero_best_means_exact():
    results = rows({1: 1e-9, 4: 0.0}, "err")
    assert select_rank(results, metric="err", policy="smallest-within", tolerance=0.5)["rank"] == 4


def test_nan_rows_are_never_selected():
    results = rows({1: float("nan"), 2: 1.5, 4: 1.2})
    assert select_rank(results)["rank"] == 4
    assert select_rank(results, policy="smallest-within", tolerance=0.5)["rank"] == 2
    with pytest.raises(ValueError, match="NaN"):
        select_rank(rows({1: float("nan")}))


@pytest.mark.parametrize(
    "results, kwargs, message",
    [
        ([], {}, "no results"),
        (rows({1: 1.0}), {"metric": "eval_accuracy"}, "eval_accuracy.*missing"),
        ([{"eval_loss": 1.0}], {}, "no 'rank'"),
        (rows({1: 1.0}), {"policy": "worst"}, "policy"),
        (rows({1: 1.0}), {"policy": "smallest-within", "tolerance": -0.1}, "tolerance"),
    ],
)
def test_errors(results, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_rank(results, **kwargs)


# ---- smallest-not-worse: paired bootstrap over per-example losses ---------------------------------------------
def loss_table(levels: dict[int, float], spread: float = 0.3, n: int = 60, seed: int = 0):
    """Per-example losses (one token each) around each rank's level, sharing the examples' own difficulty."""
    import numpy as np

    difficulty = np.random.default_rng(seed).uniform(-spread, spread, n)
    per_example = {r: {"loss_sum": list(level + difficulty), "tokens": [1.0] * n} for r, level in levels.items()}
    return rows(levels), per_example


def test_smallest_not_worse_takes_the_smallest_rank_within_the_margin():
    results, per_example = loss_table({1: 2.6, 2: 2.015, 4: 2.0, 8: 2.04})
    chosen = select_rank(results, policy="smallest-not-worse", per_example=per_example, margin=0.01)
    assert chosen["rank"] == 2  # 0.75% worse than rank 4, a shared-difficulty (paired) difference: no noise
    assert chosen["not_worse_reference_rank"] == 4
    assert chosen["not_worse_diff"] == pytest.approx(0.015)
    assert chosen["not_worse_upper"] <= chosen["not_worse_margin"] == pytest.approx(0.02)  # 1% of the best, 2.0


def test_smallest_not_worse_needs_evidence_not_just_a_close_mean():
    """Rank 1's mean is within the margin but its per-example losses scatter: the bound does not clear it."""
    import numpy as np

    results, per_example = loss_table({1: 1.0, 2: 0.999, 4: 0.995})
    noise = np.random.default_rng(7).normal(0, 0.5, 60)
    per_example[1]["loss_sum"] = list(np.asarray(per_example[4]["loss_sum"]) + 0.004 + noise - noise.mean())
    chosen = select_rank(results, policy="smallest-not-worse", per_example=per_example, margin=0.01)
    assert chosen["rank"] == 2
    assert select_rank(results, policy="smallest-within", tolerance=0.01)["rank"] == 1


def test_smallest_not_worse_with_no_margin_is_the_best_rank():
    results, per_example = loss_table({1: 1.2, 2: 1.1, 4: 1.0})
    assert select_rank(results, policy="smallest-not-worse", per_example=per_example, margin=0.0)["rank"] == 4


def test_smallest_not_worse_on_exact_match_greater_is_better():
    results = rows({1: 0.5, 2: 0.9, 4: 0.9}, "eval_exact_match")
    per_example = {1: {"exact": [1.0] * 5 + [0.0] * 5}, 2: {"exact": [1.0] * 9 + [0.0]}, 4: {"exact": [1.0] * 9 + [0.0]}}
    chosen = select_rank(results, "eval_exact_match", "smallest-not-worse", greater_is_better=True,
                         per_example=per_example, margin=0.05)
    assert chosen["rank"] == 2 and chosen["not_worse_diff"] == 0.0


def test_smallest_not_worse_without_per_example_values_is_refused():
    with pytest.raises(ValueError, match="per_example"):
        select_rank(rows({1: 1.0, 2: 0.9}), policy="smallest-not-worse")
