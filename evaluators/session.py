"""One evaluation process's state, built from a pipeline config: the base is loaded once, an adapter
can be attached later (after training finished elsewhere), and any split is scored at any rank.

Metric names say the split: `eval_*` on validation (what ranks are selected on), `test_*` on test.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from evaluators.bootstrap import intervals as bootstrap_intervals
from evaluators.metrics import evaluate, generate_exact_match
from trainers.batching import encode_all
from trainers.config import JobConfig
from trainers.datasets.splits import load_splits
from trainers.methods.base import read_adapter_meta, scaling_rank
from trainers.methods.qdylora import attach_dynamic_rank, set_active_rank
from trainers.models import base_dtype, dequantize_once, load_base_model, load_tokenizer, quant_settings, resolve_base

SPLIT_PREFIX = {"validation": "eval_", "test": "test_"}


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

    def score(self, split: str, rank: int | None, generate: bool = False, intervals: bool = False,
              per_example: dict | None = None) -> dict:
        """Metrics on `split` at `rank`; rank None scores the base alone (zero-shot). With `intervals`,
        bootstrap 95% intervals over examples as `*_ci_low` / `*_ci_high`. With `per_example` (a dict), it
        receives the per-example columns (evaluators/metrics.py `evaluate`): what paired comparisons read."""
        if not self.records[split]:
            raise ValueError(f"the {split} split is empty")
        if rank is None and isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                return self._score(self.model, split, generate, intervals, per_example)
        if rank is None:
            return self._score(self.base, split, generate, intervals, per_example)
        if self.dynamic:
            set_active_rank(self.model, rank, scale_rank=self.scale_rank)
        return self._score(self.model, split, generate, intervals, per_example)

    def _score(self, model, split: str, generate: bool, intervals: bool, per_example: dict | None) -> dict:
        batch = self.cfg.evaluation.batch_size
        if per_example is None and intervals:
            per_example = {}
        row = evaluate(model, self.examples[split], self.tokenizer, batch, per_example=per_example)
        if generate:
            row.update(generate_exact_match(model, self.records[split], self.tokenizer, batch_size=batch,
                                            per_example=per_example))
        prefix = SPLIT_PREFIX[split]
        row = {prefix + k.removeprefix("eval_"): v for k, v in row.items()}
        if intervals:
            row.update(bootstrap_intervals(per_example, prefix, self.cfg.evaluation.bootstrap_samples,
                                           self.cfg.training.seed))
        return row
