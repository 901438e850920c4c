"""Pick one rank from a sweep's rows. Python and numpy: the orchestrator can call it without torch.

Policies:
  best               the best metric value; ties go to the smaller rank (cheaper, same quality).
  smallest-within    the smallest rank whose value is within `tolerance` (relative) of the best value:
                     trade a sliver of quality for a smaller adapter.
  smallest-not-worse the smallest rank that is not worse than the best rank by more than `margin` (relative to
                     the best value) at `confidence`: the one-sided upper bound of a paired bootstrap of
                     (rank - best) over the per-example values must stay within the margin. A reviewer can
                     defend it: a small rank is chosen only when the data say it is not meaningfully worse.
"""

from __future__ import annotations

import math

from evaluators.bootstrap import paired_difference

POLICIES = ("best", "smallest-within", "smallest-not-worse")
# What every rank's row of the validation sweep holds (evaluators/metrics.py `evaluate`, "eval_" prefixed):
# the metrics selection.metric may name.
SWEEP_METRICS = ("eval_loss", "eval_perplexity", "eval_exact_match")


def _usable_rows(results: list[dict], metric: str) -> list[dict]:
    if not results:
        raise ValueError("no results to select a rank from")
    for row in results:
        if "rank" not in row:
            raise ValueError(f"a result row has no 'rank': {row}")
        if metric not in row:
            raise ValueError(f"metric {metric!r} is missing from the row for rank {row['rank']}; it has {sorted(row)}")
    # A NaN (a diverged rank) compares false with everything, so it could never be judged; leave it out.
    rows = [row for row in results if not math.isnan(float(row[metric]))]
    if not rows:
        raise ValueError(f"every result has a NaN {metric!r}")
    return rows


def select_rank(results: list[dict], metric: str = "eval_loss", policy: str = "best", tolerance: float = 0.01,
                greater_is_better: bool = False, per_example: dict[int, dict] | None = None, margin: float = 0.01,
                confidence: float = 0.95, samples: int = 1000, seed: int = 0) -> dict:
    """The selected row of `results` (each a dict with 'rank' and `metric`).

    smallest-not-worse also needs `per_example` (rank -> that rank's per-example columns on the validation
    examples, evaluators/metrics.py) and returns a copy of the row with its evidence: `not_worse_reference_rank`
    (the best rank), `not_worse_diff` and `not_worse_low` / `not_worse_high` / `not_worse_upper` (the difference,
    worse-is-positive, its two-sided interval and one-sided bound at `confidence`) and `not_worse_margin`."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    rows = _usable_rows(results, metric)
    sign = -1.0 if greater_is_better else 1.0  # lower score is better after this flip
    best = min(rows, key=lambda row: (sign * float(row[metric]), row["rank"]))
    if policy == "best":
        return best
    if policy == "smallest-not-worse":
        return _smallest_not_worse(rows, best, metric, greater_is_better, per_example, margin, confidence, samples, seed)
    # Slack relative to |best| so a negative best (e.g. a log-likelihood) loosens the bound, never tightens it.
    best_value = float(best[metric])
    bound = best_value + sign * tolerance * abs(best_value)

    def within(row) -> bool:
        value = float(row[metric])
        # isclose: value == best*(1+tol) on paper can land a rounding error outside the bound.
        return sign * value <= sign * bound or math.isclose(value, bound, rel_tol=1e-12)

    return min((row for row in rows if within(row)), key=lambda row: row["rank"])


def _smallest_not_worse(rows: list[dict], best: dict, metric: str, greater_is_better: bool,
                        per_example: dict[int, dict] | None, margin: float, confidence: float, samples: int,
                        seed: int) -> dict:
    if per_example is None:
        raise ValueError("policy smallest-not-worse needs the per-example values of every rank (per_example)")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    missing = [row["rank"] for row in rows if row["rank"] not in per_example]
    if missing:
        raise ValueError(f"per-example values are missing for ranks {missing}")
    allowed = margin * abs(float(best[metric]))
    for row in sorted(rows, key=lambda row: row["rank"]):
        # Worse is positive either way: loss(rank) - loss(best), or match(best) - match(rank).
        first, second = (best, row) if greater_is_better else (row, best)
        d = paired_difference(per_example[first["rank"]], per_example[second["rank"]], metric, samples, seed,
                              confidence)
        if row is best or d["upper"] <= allowed:
            return {**row, "not_worse_reference_rank": best["rank"], "not_worse_diff": d["diff"],
                    "not_worse_low": d["low"], "not_worse_high": d["high"], "not_worse_upper": d["upper"],
                    "not_worse_margin": allowed}
    raise AssertionError("unreachable: the best rank is never worse than itself")
