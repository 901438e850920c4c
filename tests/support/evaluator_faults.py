"""A crash inside an evaluator, on a chosen rank: installed in every Ray worker through Ray's
`worker_process_setup_hook`, it wraps EvalSession's scoring so that the first process asked to score rank
DYRANK_TEST_KILL_RANK ("any": whatever rank) on the DYRANK_TEST_KILL_SPLIT split (default validation) dies there
(os._exit, as a segfault or OOM kill would), once per test. Every scoring call is logged (pid, actor, ranks, split) to DYRANK_TEST_SCORE_LOG, so a test can tell
which process scored what. Keyed on the rank, not on how the pipeline dispatches ranks (one per task or a
group per task): whatever calls the session with that rank dies with it."""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

KILL_RANK_ENV, KILL_SPLIT_ENV, SCORE_LOG_ENV = "DYRANK_TEST_KILL_RANK", "DYRANK_TEST_KILL_SPLIT", "DYRANK_TEST_SCORE_LOG"


def install() -> None:
    if KILL_RANK_ENV not in os.environ:
        return
    from evaluators.session import EvalSession

    # score_ranks where the session scores several ranks per call (score then goes through it), else score
    name = "score_ranks" if hasattr(EvalSession, "score_ranks") else "score"
    real = getattr(EvalSession, name)
    signature = inspect.signature(real)

    @functools.wraps(real)
    def scoring(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs).arguments
        ranks = list(bound["ranks"]) if "ranks" in bound else [bound.get("rank")]
        _log(ranks, bound["split"])
        if bound["split"] == os.environ.get(KILL_SPLIT_ENV, "validation") and _marked(ranks) and _claim_the_kill():
            os._exit(1)
        return real(self, *args, **kwargs)

    setattr(EvalSession, name, scoring)


def _marked(ranks: list) -> bool:
    chosen = os.environ[KILL_RANK_ENV]
    return chosen == "any" or int(chosen) in ranks


def _log(ranks: list, split: str) -> None:
    import ray

    actor = ray.get_runtime_context().get_actor_id()
    line = json.dumps({"pid": os.getpid(), "actor": actor, "ranks": ranks, "split": split}) + "\n"
    with open(os.environ[SCORE_LOG_ENV], "a") as fh:  # one short append: whole lines even from two processes
        fh.write(line)


def _claim_the_kill() -> bool:
    """True for the first process only: the restarted actor must be able to score the rank."""
    marker = Path(os.environ[SCORE_LOG_ENV] + ".killed")
    try:
        marker.open("x").close()
    except FileExistsError:
        return False
    return True


def score_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
