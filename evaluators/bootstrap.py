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


# ---- paired comparisons: two models scored on the same examples ------------------------------------------------
# Paired means one resampled index set serves both models, so the example-to-example variation they share cancels;
# an unpaired interval on each model separately would be far wider and could not tell two close ranks apart.
# Fidelity (evaluators/fidelity.py) and the smallest-not-worse policy (evaluators/selection.py) both use this.

def example_statistic(metric: str) -> tuple[str, ...]:
    """The per-example columns a sweep metric is computed from (evaluators/metrics.py `evaluate`)."""
    name = metric.split("_", 1)[1] if metric.startswith(("eval_", "test_")) else metric
    if name == "loss":
        return ("loss_sum", "tokens")
    if name == "exact_match":
        return ("exact",)
    raise ValueError(f"no per-example form of {metric!r}: paired comparisons support loss and exact_match")


def column_metric(columns: dict[str, np.ndarray], idx: np.ndarray | None = None) -> np.ndarray | float:
    """The metric over the (resampled) examples: token-weighted loss, or mean exact match. With `idx` of shape
    (draws, n), one value per draw."""
    pick = (lambda v: v) if idx is None else (lambda v: v[idx])
    if "loss_sum" in columns:
        return pick(columns["loss_sum"]).sum(-1) / np.maximum(pick(columns["tokens"]).sum(-1), 1.0)
    return pick(columns["exact"]).mean(-1)


def paired_difference(a: dict[str, list[float]], b: dict[str, list[float]], metric: str = "eval_loss",
                      samples: int = 1000, seed: int = 0, level: float = 0.95, chunk: int = 200) -> dict[str, float]:
    """metric(a) - metric(b) over the same examples, with a two-sided `level` percentile interval from one
    paired bootstrap (`low`, `high`) and the one-sided `level` upper bound (`upper`): what "a is not worse than
    b by more than m at confidence level" checks for a loss."""
    keys = example_statistic(metric)
    cols_a = {k: np.asarray(a[k], dtype=np.float64) for k in keys}
    cols_b = {k: np.asarray(b[k], dtype=np.float64) for k in keys}
    n = len(cols_a[keys[0]])
    if n == 0 or any(len(v) != n for v in (*cols_a.values(), *cols_b.values())):
        raise ValueError(f"a paired comparison needs both sides scored on the same, non-empty examples "
                         f"(lengths {[len(v) for v in (*cols_a.values(), *cols_b.values())]})")
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, samples, chunk):  # (chunk, n) index blocks: vectorized without a samples x n matrix
        idx = rng.integers(0, n, size=(min(chunk, samples - start), n))
        draws.append(column_metric(cols_a, idx) - column_metric(cols_b, idx))
    draws = np.concatenate(draws)
    low, high, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2, level])
    return {"diff": float(column_metric(cols_a) - column_metric(cols_b)), "low": float(low), "high": float(high),
            "upper": float(upper)}
