"""Teacher-forced scores at completion positions only, per example, with one host sync per call.

Position t predicts token t+1; only completion tokens (label != -100) are scored. The decoder's last hidden
states are gathered at those positions *before* the `lm_head`, so no full-vocabulary logits are computed over
prompt tokens (on a chat prompt that is most of the sequence). Which positions those are is known on the host
from the labels, so gathering needs no device-to-host sync; every per-example sum stays on the device until the
end of the call, which copies everything back at once.

`copies` > 1 scores a batch repeated `copies` times (block j = rows j*B..(j+1)*B-1), which is how
trainers/methods/qdylora/multirank.py scores several ranks in one forward; each block gets its own results.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainers.batching import IGNORE_INDEX, eval_batches
from trainers.loss import decoder_and_head

def _gathered_logits(model, parts, input_ids, attention_mask, rows, cols) -> torch.Tensor:
    """Logits (len(rows), vocab) at positions (rows, cols) only."""
    if parts is None:  # a head we must not bypass: full logits, then pick
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return head(hidden[rows, cols])


@torch.inference_mode()
def completion_scores(model, examples: list[dict], pad_id: int, batch_size: int, copies: int = 1) -> list[dict]:
    """Per block, per example: {"loss_sum": summed token losses, "tokens": completion tokens, "exact": 1.0 when
    every completion position's argmax is its label (0.0 for an example with no completion token)}."""
    if not examples:
        raise ValueError("no examples to evaluate")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # LoRA dropout off: every rank is scored deterministically
    parts = decoder_and_head(model)
    loss_sums, hits = [[] for _ in range(copies)], [[] for _ in range(copies)]
    tokens: list[int] = []
    try:
        for batch in eval_batches(examples, batch_size, pad_id):
            labels = batch["labels"][:, 1:]
            rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)  # on the host: no sync
            width = labels.shape[0]
            per_row = torch.bincount(rows, minlength=width)
            tokens += per_row.tolist()
            all_rows = torch.cat([rows + j * width for j in range(copies)]).to(device, non_blocking=True)
            cols_d, rows_d = cols.to(device, non_blocking=True), rows.to(device, non_blocking=True)
            target, per_row_d = labels[rows, cols].to(device, non_blocking=True), per_row.to(device, non_blocking=True)
            ids = batch["input_ids"].to(device).repeat(copies, 1)
            attention = batch["attention_mask"].to(device).repeat(copies, 1)
            n = len(rows)
            logits = _gathered_logits(model, parts, ids, attention, all_rows, cols_d.repeat(copies))
            for j in range(copies):  # one block at a time: (tokens, vocab) in fp32 for one rank, not k
                block = logits[j * n:(j + 1) * n].float()
                token_losses = F.cross_entropy(block, target, reduction="none")
                loss_sums[j].append(torch.zeros(width, device=device).index_add_(0, rows_d, token_losses))
                correct = torch.zeros(width, dtype=torch.long, device=device)
                correct.index_add_(0, rows_d, (block.argmax(-1) == target).long())
                hits[j].append(((correct == per_row_d) & (per_row_d > 0)).float())
    finally:
        model.train(was_training)
    stacked = torch.stack([torch.stack([torch.cat(loss_sums[j]), torch.cat(hits[j])]) for j in range(copies)])
    host = stacked.cpu().tolist()  # the one device-to-host sync
    return [{"loss_sum": block[0], "tokens": list(tokens), "exact": block[1]} for block in host]


def completion_metrics(per_example: dict, prefix: str = "eval_") -> dict:
    """Token-weighted loss over the whole set (so it does not depend on batch size), perplexity, exact match."""
    total = sum(per_example["tokens"])
    if total == 0:
        raise ValueError("the examples hold no completion tokens (every label is masked or truncated away)")
    loss = sum(per_example["loss_sum"]) / total
    return {
        f"{prefix}loss": loss,
        f"{prefix}perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        f"{prefix}exact_match": sum(per_example["exact"]) / len(per_example["exact"]),
        f"{prefix}tokens": total,
        f"{prefix}examples": len(per_example["exact"]),
    }
