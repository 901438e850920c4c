"""One evaluation process's state, built from a pipeline config: the base is loaded once, an adapter
can be attached later (after training finished elsewhere), and any split is scored at any rank.

Metric names say the split: `eval_*` on validation (what ranks are selected on), `test_*` on test.
Losses are computed at completion positions only (evaluators/completion_loss.py); a dynamic adapter's ranks
are scored several per forward (trainers/methods/qdylora/multirank.py), `evaluation.ranks_per_forward` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from evaluators.bootstrap import intervals as bootstrap_intervals
from evaluators.completion_loss import completion_metrics, completion_scores
from evaluators.metrics import generate_exact_match
from trainers.batching import encode_all
from trainers.config import JobConfig
from trainers.datasets.splits import load_splits
from trainers.methods.base import read_adapter_meta, scaling_rank
from trainers.methods.qdylora import attach_dynamic_rank, set_active_rank
from trainers.methods.qdylora.multirank import ranks_per_row
from trainers.models import base_dtype, dequantize_once, load_base_model, load_tokenizer, quant_settings, resolve_base

SPLIT_PREFIX = {"validation": "eval_", "test": "test_"}
# Ranks per batched forward when evaluation.ranks_per_forward is unset. On a compute-bound CPU k ranks in one
# forward cost k forwards' matmuls anyway (measured on the tiny model: no gain); on a GPU one forward per rank
# is launch-bound, and a batched 8-rank forward measured 0.45 of 8 forwards (H100, issue 16).
RANKS_PER_FORWARD_DEFAULT = {"cpu": 1, "cuda": 8}


@dataclass
class RankScores:
    """One rank scored on one split: its metrics (prefixed by split) and its per-example values, in the split's
    order: "loss_sum" (summed token losses), "tokens" (completion tokens), "exact" (teacher-forced exact match),
    and "gen_exact" when generation was asked for. Intervals and fidelity metrics resample these."""

    rank: int | None
    metrics: dict[str, float]
    per_example: dict[str, list[float]]


class EvalSession:
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        base_path = resolve_base(cfg.model.source)
        self.tokenizer = load_tokenizer(base_path, cfg.model.trust_remote_code)
        self.model = load_base_model(base_path, quant_settings(cfg), base_dtype(cfg),
                                     trust_remote_code=cfg.model.trust_remote_code).eval()
        if cfg.evaluation.dequantize_base:
            self.model = dequantize_once(self.model, cfg.quantization.compute_dtype)
        self.base_loads = 1  # and it stays 1: ranks switch in place, adapters attach to this base
        self.base, self.dynamic = self.model, False
        self.scale_rank = None  # None: a rank-b slice is scaled alpha/b; an int r: alpha/r at every b (qlora-svd)
        limit = cfg.evaluation.max_samples
        splits = load_splits(cfg.data)
        self.records = {name: splits[name][:limit] for name in SPLIT_PREFIX}
        self.examples = {name: encode_all(recs, self.tokenizer, cfg.data.max_seq_len) for name, recs in self.records.items()}

    def attach_adapter_dir(self, adapter_dir: str | Path) -> None:
        """Put what a training saved on the loaded base, replacing any earlier one: a PEFT adapter (made
        rank-switchable if it is dynamic), or a full-parameter method's own weights, which replace the base
        for scoring (rank None still scores the untouched base)."""
        meta = read_adapter_meta(adapter_dir) or {"dynamic": True}
        if isinstance(self.model, PeftModel):
            self.model.unload()
        if meta.get("full_weights"):
            trained = load_base_model(Path(adapter_dir), None, base_dtype(self.cfg), trust_remote_code=False)
            self.model, self.dynamic = trained.eval(), False
            return
        self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), is_trainable=False).eval()
        self.dynamic = bool(meta["dynamic"])
        self.scale_rank = scaling_rank(meta)
        if self.dynamic:
            attach_dynamic_rank(self.model)

    def ranks_per_forward(self) -> int:
        """evaluation.ranks_per_forward, or the default for the device the model is on."""
        chosen = self.cfg.evaluation.ranks_per_forward
        if chosen is not None:
            return chosen
        return RANKS_PER_FORWARD_DEFAULT.get(next(self.model.parameters()).device.type, 1)

    def score(self, split: str, rank: int | None, generate: bool = False, intervals: bool = False) -> dict:
        """Metrics on `split` at `rank`; rank None scores the base alone (zero-shot). With `intervals`,
        bootstrap 95% intervals over examples as `*_ci_low` / `*_ci_high`."""
        [scored] = self.score_ranks(split, [rank], generate, intervals)
        return scored.metrics

    def score_ranks(self, split: str, ranks: list[int | None], generate: bool = False,
                    intervals: bool = False) -> list[RankScores]:
        """Each rank's metrics and per-example values on `split`, in the order given. A dynamic adapter's ranks
        are scored `ranks_per_forward()` at a time in one batched forward; rank None is the base alone."""
        if not self.records[split]:
            raise ValueError(f"the {split} split is empty")
        if not ranks:
            raise ValueError("no ranks to score")
        scored: dict[int | None, dict] = {}
        adapter_ranks = [r for r in dict.fromkeys(ranks) if r is not None]
        if None in ranks:
            scored[None] = self._base_scores(split)
        if self.dynamic:
            k = self.ranks_per_forward()
            for start in range(0, len(adapter_ranks), k):
                group = adapter_ranks[start:start + k]
                scored.update(zip(group, self._dynamic_scores(split, group)))
        else:  # a fixed-rank adapter or full weights: one model, whatever rank is asked
            for rank in adapter_ranks:
                scored[rank] = self._scores(self.model, split)
        return [self._finish(split, rank, scored[rank], generate, intervals) for rank in ranks]

    def _scores(self, model, split: str, copies: int = 1) -> list[dict] | dict:
        found = completion_scores(model, self.examples[split], self.tokenizer.pad_token_id,
                                  self.cfg.evaluation.batch_size, copies)
        return found if copies > 1 else found[0]

    def _base_scores(self, split: str) -> dict:
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                return self._scores(self.model, split)
        return self._scores(self.base, split)

    def _dynamic_scores(self, split: str, group: list[int]) -> list[dict]:
        if len(group) == 1:  # plain slicing: no hooks, no repeated batch
            set_active_rank(self.model, group[0], scale_rank=self.scale_rank)
            return [self._scores(self.model, split)]
        with ranks_per_row(self.model, group, scale_rank=self.scale_rank):
            return self._scores(self.model, split, copies=len(group))

    def _finish(self, split: str, rank: int | None, per_example: dict, generate: bool, intervals: bool) -> RankScores:
        per_example = {k: list(v) for k, v in per_example.items()}  # a rank listed twice gets its own copy
        row = completion_metrics(per_example)
        if generate:  # greedy decoding is sequential per rank: only the selected rank's test call asks for it
            if rank is None and isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    row.update(self._generate(self.model, split, per_example))
            else:
                if rank is not None and self.dynamic:
                    set_active_rank(self.model, rank, scale_rank=self.scale_rank)
                row.update(self._generate(self.model if rank is not None else self.base, split, per_example))
        prefix = SPLIT_PREFIX[split]
        row = {prefix + k.removeprefix("eval_"): v for k, v in row.items()}
        if intervals:
            row.update(bootstrap_intervals(per_example, prefix, self.cfg.evaluation.bootstrap_samples,
                                           self.cfg.training.seed))
        return RankScores(rank, row, per_example)

    def _generate(self, model, split: str, per_example: dict) -> dict:
        return generate_exact_match(model, self.records[split], self.tokenizer,
                                    batch_size=self.cfg.evaluation.batch_size, per_example=per_example)
