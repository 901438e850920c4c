"""Pick one rank from a sweep's rows. Pure Python: the orchestrator can call it without torch.

Policies:
  best             the best metric value; ties go to the smaller rank (cheaper, same quality).
  smallest-within  the smallest rank whose value is within `tolerance` (relative) of the best value:
                   trade a sliver of quality for a smaller adapter.
"""

from __future__ import annotations

import math

POLICIES = ("best", "smallest-within")
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
                greater_is_better: bool = False) -> dict:
    """The selected row of `results` (each a dict with 'rank' and `metric`)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    rows = _usable_rows(results, metric)
    sign = -1.0 if greater_is_better else 1.0  # lower score is better after this flip
    best = min(rows, key=lambda row: (sign * float(row[metric]), row["rank"]))
    if policy == "best":
        return best
    # Slack relative to |best| so a negative best (e.g. a log-likelihood) loosens the bound, never tightens it.
    best_value = float(best[metric])
    bound = best_value + sign * tolerance * abs(best_value)

    def within(row) -> bool:
        value = float(row[metric])
        # isclose: value == best*(1+tol) on paper can land a rounding error outside the bound.
        return sign * value <= sign * bound or math.isclose(value, bound, rel_tol=1e-12)

    return min((row for row in rows if within(row)), key=lambda row: row["rank"])
