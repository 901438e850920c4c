"""Bootstrap intervals: they bracket the estimate, narrow with more data, and repeat with the seed."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.bootstrap import bootstrap_interval, intervals, mean, token_weighted_loss


def _coin(n: int, p: float = 0.3, seed: int = 1) -> list[float]:
    return (np.random.default_rng(seed).random(n) < p).astype(float).tolist()


def test_interval_brackets_the_estimate_and_narrows_with_more_examples():
    small, large = _coin(50), _coin(800)
    lo_s, hi_s = bootstrap_interval(mean("x"), {"x": small})
    lo_l, hi_l = bootstrap_interval(mean("x"), {"x": large})
    assert lo_s <= np.mean(small) <= hi_s and lo_l <= np.mean(large) <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 2  # 16x the data: about a quarter of the width


def test_same_seed_same_interval_and_a_constant_has_no_width():
    data = {"x": _coin(100)}
    assert bootstrap_interval(mean("x"), data, seed=3) == bootstrap_interval(mean("x"), data, seed=3)
    assert bootstrap_interval(mean("x"), {"x": [1.0] * 20}) == (1.0, 1.0)


def test_loss_interval_is_token_weighted_and_named_like_the_metric():
    per_example = {"loss_sum": [2.0, 30.0, 4.0, 8.0], "tokens": [1, 10, 2, 4], "exact": [1, 0, 1, 0],
                   "gen_exact": [1, 0, 0, 0]}
    out = intervals(per_example, "test_", samples=500)
    assert set(out) == {f"test_{m}_ci_{e}" for m in ("loss", "exact_match", "gen_exact_match") for e in ("low", "high")}
    point = token_weighted_loss({k: np.asarray(v, float) for k, v in per_example.items()})
    assert out["test_loss_ci_low"] <= point <= out["test_loss_ci_high"]


def test_ragged_columns_are_rejected():
    with pytest.raises(ValueError):
        bootstrap_interval(token_weighted_loss, {"loss_sum": [1.0, 2.0], "tokens": [1.0]})
