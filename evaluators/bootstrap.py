"""Percentile bootstrap intervals over examples: resample examples with replacement, recompute the
statistic, take the (1-level)/2 and (1+level)/2 quantiles. Examples, not tokens, are the unit: tokens of
one answer are not independent draws."""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_interval(statistic: Callable[[dict[str, np.ndarray]], float], columns: dict[str, list[float]],
                       samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """`columns` are per-example values of equal length; `statistic` maps resampled columns to a number."""
    data = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    n = len(next(iter(data.values())))
    if n == 0 or any(len(v) != n for v in data.values()):
        raise ValueError("bootstrap needs equal-length, non-empty per-example columns")
    rng = np.random.default_rng(seed)
    draws = [statistic({k: v[idx] for k, v in data.items()}) for idx in rng.integers(0, n, size=(samples, n))]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def token_weighted_loss(cols: dict[str, np.ndarray]) -> float:
    return float(cols["loss_sum"].sum() / max(cols["tokens"].sum(), 1.0))


def mean(column: str) -> Callable[[dict[str, np.ndarray]], float]:
    return lambda cols: float(cols[column].mean())


def intervals(per_example: dict[str, list[float]], prefix: str, samples: int = 1000, seed: int = 0) -> dict:
    """95% intervals for the loss, teacher-forced exact match and, when present, generated exact match,
    named like their metrics: `{prefix}loss_ci_low`, `{prefix}loss_ci_high`, ..."""
    wanted = {"loss": (token_weighted_loss, ["loss_sum", "tokens"]), "exact_match": (mean("exact"), ["exact"]),
              "gen_exact_match": (mean("gen_exact"), ["gen_exact"])}
    out = {}
    for name, (statistic, keys) in wanted.items():
        if all(k in per_example for k in keys):
            low, high = bootstrap_interval(statistic, {k: per_example[k] for k in keys}, samples, seed)
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = low, high
    return out
