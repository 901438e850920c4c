"""Score every rank of one QDyLoRA adapter with a single loaded model.

The base (possibly NF4, the costly part) and the full rank-r_max adapter are loaded once; each rank is
then just `set_active_rank` (slice views plus a new alpha/rank scaling), so a sweep over all ranks costs
one load plus one evaluation pass per rank. Fixed-rank QLoRA baselines load through `load_adapter` and
are scored by the same `evaluate`, so the numbers compare like for like.
"""

from __future__ import annotations

import torch
from peft import PeftModel

from evaluators.metrics import evaluate, generate_exact_match
from trainers.models import QuantSettings, load_base_model, load_tokenizer
from trainers.methods.qdylora import attach_dynamic_rank, exportable_ranks, set_active_rank


def load_adapter(base_path, adapter_dir, quant: QuantSettings | None = None, device=None,
                 trust_remote_code: bool = False):
    """Base + a plain PEFT adapter (any rank), in eval mode: how a QLoRA baseline or an export is scored."""
    base = load_base_model(base_path, quant, trust_remote_code=trust_remote_code, device=device)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    return model.eval()


class RankSweep:
    """One model, many ranks: `evaluate_rank(r)` switches the active rank in place and scores it.

    `examples` are encoded records (trainers.batching.encode_all, unpacked) for the loss and teacher-forced
    exact match; `gen_records`, when given, are raw records also scored by greedy generation at each rank.
    """

    def __init__(self, base_path, adapter_dir, examples: list[dict], *, quant: QuantSettings | None = None,
                 tokenizer=None, batch_size: int = 8, device=None, trust_remote_code: bool = False,
                 gen_records: list[dict] | None = None, max_new_tokens: int = 32):
        self.examples, self.batch_size = examples, batch_size
        self.gen_records, self.max_new_tokens = gen_records, max_new_tokens
        self.tokenizer = tokenizer or load_tokenizer(base_path, trust_remote_code)
        self.ranks = exportable_ranks(adapter_dir)  # 1..r_max for a dynamic adapter, else its one rank
        self.loads = 0  # base loads; a sweep must keep this at 1 however many ranks it scores
        self.model = load_adapter(base_path, adapter_dir, quant, device, trust_remote_code)
        self.loads += 1
        attach_dynamic_rank(self.model)
        self.device = next(self.model.parameters()).device

    def evaluate_rank(self, rank: int) -> dict:
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is outside this adapter's ranks {self.ranks.start}..{self.ranks.stop - 1}")
        set_active_rank(self.model, rank)
        row = {"rank": rank, **evaluate(self.model, self.examples, self.tokenizer, self.batch_size)}
        if self.gen_records:
            row.update(generate_exact_match(self.model, self.gen_records, self.tokenizer,
                                            self.max_new_tokens, self.batch_size))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # return the activations' cached blocks before the next rank
        return row

    def sweep(self, ranks=None) -> list[dict]:
        """Rows for `ranks` (default: every rank the adapter supports), in the order given."""
        return [self.evaluate_rank(r) for r in (ranks if ranks is not None else self.ranks)]

    def close(self) -> None:
        """Drop the model so a long-lived evaluator process gives its accelerator memory back."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
