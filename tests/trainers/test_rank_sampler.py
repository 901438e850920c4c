"""The rank sampler: uniform over r_min..r_max, reproducible, resumable."""

from __future__ import annotations

from collections import Counter

import pytest
from scipy.stats import chi2

from trainers.methods.qdylora import RankSampler


def assert_uniform(draws: list[int], r_min: int, r_max: int) -> None:
    """Pearson chi-square goodness of fit at the 0.1% level: a fair sampler fails 1 run in 1000."""
    counts = Counter(draws)
    assert set(counts) <= set(range(r_min, r_max + 1)), f"draws outside {r_min}..{r_max}: {sorted(counts)}"
    k = r_max - r_min + 1
    expected = len(draws) / k
    statistic = sum((counts.get(r, 0) - expected) ** 2 / expected for r in range(r_min, r_max + 1))
    assert statistic < chi2.ppf(0.999, df=k - 1), f"chi-square {statistic:.1f} rejects uniformity: {counts}"


@pytest.mark.parametrize("r_min,r_max", [(1, 64), (3, 8), (1, 2)])
def test_uniform_over_the_range(r_min, r_max):
    sampler = RankSampler(r_min, r_max, seed=7)
    assert_uniform([sampler.sample() for _ in range(20_000)], r_min, r_max)


def test_single_rank_range_always_returns_it():
    sampler = RankSampler(4, 4, seed=0)
    assert {sampler.sample() for _ in range(100)} == {4}


def test_a_biased_sequence_fails_the_check():
    with pytest.raises(AssertionError, match="rejects uniformity"):
        assert_uniform([1] * 600 + list(range(1, 9)) * 50, 1, 8)


def test_state_dict_resumes_the_same_sequence():
    a = RankSampler(1, 64, seed=3)
    [a.sample() for _ in range(10)]
    state = a.state_dict()
    expected = [a.sample() for _ in range(20)]
    b = RankSampler(1, 64, seed=999)
    b.load_state_dict(state)
    assert [b.sample() for _ in range(20)] == expected


def test_bad_range_is_rejected():
    with pytest.raises(ValueError):
        RankSampler(5, 4, seed=0)
