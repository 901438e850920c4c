"""What crosses the Ray boundary, typed: actors return these, the driver records them (it alone writes MLflow).

A child run is keyed by `JobKey(kind, rank-or-job)`: an eval run by its rank, a baseline by its job name (two
methods may share a rank), the main training, the zero-shot score. `dyrank resume` finds finished work by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from orchestrator import tags
from trainers.costs import TrainingCosts

RunKind = Literal["train", "eval", "baseline", "zeroshot"]


class JobKey(NamedTuple):
    kind: RunKind
    id: int | str | None  # eval: the rank; baseline: the job name; train: the full rank; zeroshot: None

    @classmethod
    def of_run(cls, run) -> "JobKey":
        """The key of a child run read back from MLflow (the rank tag: a run whose params never landed)."""
        kind = run.data.tags.get(tags.KIND_TAG)
        if kind == "baseline":
            return cls(kind, run.info.run_name)
        rank = run.data.params.get("rank", run.data.tags.get(tags.RANK_TAG))
        return cls(kind, int(rank) if rank is not None else None)


@dataclass(frozen=True)
class Placement:
    """Where an actor ran: recorded as tags on the run it produced."""

    actor_id: str
    node_id: str
    pid: int
    gpu_ids: tuple[str, ...] = ()
    provenance: dict[str, str] = field(default_factory=dict)  # orchestrator/provenance.py, as the actor sees it

    def tags(self) -> dict[str, str]:
        return {tags.ACTOR_TAG: self.actor_id, tags.NODE_TAG: self.node_id, tags.GPUS_TAG: ",".join(self.gpu_ids),
                **self.provenance}


@dataclass
class TrainingReply:
    """A finished training: its per-step metrics, costs and method records; a baseline also its scores,
    the main job its adapter's files (they travel to the evaluators through the object store)."""

    placement: Placement
    start: float
    end: float
    steps: int
    final_loss: float
    resumed_from: int
    costs: TrainingCosts
    step_rows: list[dict]  # metrics.jsonl, one dict per optimizer step
    artifacts: dict = field(default_factory=dict)  # JSON-able method records, e.g. AdaLoRA's rank allocation
    scores: dict[str, float] = field(default_factory=dict)  # baselines: eval_* and test_* on their own run
    adapter_files: dict[str, bytes] | None = None  # the main job: its saved adapter, file name -> bytes
    torch_threads: int | None = None  # the torch threads the training ran with
    # Baselines: split -> per-example columns (evaluators/per_example.py) at their rank; a rank-dynamic baseline
    # (qlora-svd) also every rank it swept: "split@rank" -> columns, with its scores in rank_scores.
    per_example: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rank_scores: dict[int, dict[str, float]] = field(default_factory=dict)
    # A QLoRA grid job whose r_max run a qlora-svd baseline reuses: that baseline's reply, scored on this training.
    derived: "TrainingReply | None" = None


@dataclass(frozen=True)
class ActorUsage:
    """How long an actor held its reservation (placed_at..now, driver-side clock of the node) and how much of
    that its tasks ran: the rest is reserved but idle."""

    actor_id: str
    placed_at: float
    now: float
    busy_seconds: float
    threads: int

    @property
    def reserved_seconds(self) -> float:
        return self.now - self.placed_at


@dataclass
class EvalResult:
    """One scoring: a rank of the main adapter (rank None: the base alone, zero-shot) on one split."""

    rank: int | None
    scores: dict[str, float]  # eval_* on validation, test_* on test (with *_ci_low / *_ci_high when asked)
    placement: Placement
    start: float
    end: float
    # Per example, in the split's order: loss_sum, tokens, exact (and gen_exact when generated); what intervals
    # and fidelity metrics resample (evaluators/per_example.py keeps them as artifacts). Not logged as metrics.
    per_example: dict[str, list[float]] = field(default_factory=dict)
    torch_threads: int | None = None  # the torch threads the scoring ran with

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def metrics(self) -> dict[str, float]:
        """What its MLflow run records: the scores and the time they took."""
        return {**self.scores, "seconds": self.seconds}

    def row(self) -> dict:
        """The sweep row the selection policy, the summary table and the plots read."""
        return {"rank": self.rank, **self.metrics()}
