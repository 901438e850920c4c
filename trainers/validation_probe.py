"""Validation loss while training runs: every `training.eval_every` steps a few ranks (r_min, the middle, r_max for
a rank-sampling method; the one trained rank otherwise) are scored on the first `training.eval_samples` validation
examples, so the rank curves and their separation can be watched as training goes, not only after it.

The values join the step's row as `val_loss_r<rank>`: metrics.jsonl, the recipe's on_step, and the training run's
MLflow series (orchestrator/run_records.py logs every `val_loss_r*` key with step = the optimizer step).
"""

from __future__ import annotations

PREFIX = "val_loss_r"


def probe_ranks(adapter) -> list[int]:
    """r_min, the middle and r_max for a method that trains every rank; else its one trained rank."""
    if adapter.dynamic and adapter.spec.samples_rank:
        return sorted({adapter.r_min, (adapter.r_min + adapter.r_max) // 2, adapter.r_max})
    return [adapter.full_rank]


class ValidationProbe:
    def __init__(self, cfg, validation_records: list[dict], tokenizer):
        from trainers.batching import encode_all  # here, not at the top: the driver imports PREFIX without torch

        t = cfg.training
        if not validation_records:
            raise ValueError("training.eval_every needs validation examples; the validation split is empty")
        self.every, self.tokenizer, self.batch_size = t.eval_every, tokenizer, cfg.evaluation.batch_size
        self.examples = encode_all(validation_records[:t.eval_samples], tokenizer, cfg.data.max_seq_len)
        self.ranks = probe_ranks(cfg.adapter)
        self.switch = cfg.adapter.dynamic and cfg.adapter.spec.samples_rank  # the others train at one rank

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def score(self, model) -> dict[str, float]:
        """{val_loss_r<rank>: loss} at each probe rank; `evaluate` puts the model in eval mode and back."""
        from evaluators.metrics import evaluate
        from trainers.methods.qdylora import get_active_rank, set_active_rank

        active = get_active_rank(model) if self.switch else None
        out = {}
        try:
            for rank in self.ranks:
                if self.switch:
                    set_active_rank(model, rank)
                out[f"{PREFIX}{rank}"] = evaluate(model, self.examples, self.tokenizer, self.batch_size)["eval_loss"]
        finally:
            if active is not None:
                set_active_rank(model, active)
        return out
