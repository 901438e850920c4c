"""The causal-LM training loss, computed only where it is defined and, optionally, in chunks of tokens.

Only the scored positions get logits: on instruction data the prompt is most of the sequence (countries: ~60
prompt tokens, ~6 answer tokens) and the full-vocabulary lm_head is a fifth of SmolLM2's FLOPs, so projecting
every position (what `model(labels=...)` does) wastes most of it. With `chunk_tokens` > 0, in addition, full-vocabulary fp32 logits never exist at once.

A model's own loss builds logits for every position (batch x seq x vocab) and upcasts them to fp32 before the
cross-entropy; with SmolLM2's 49k vocabulary at batch 8 x 512 that and its gradient are most of the training
peak (P4 in docs/benchmarks.md). Here the decoder runs once to its last hidden states, and the lm_head and the
cross-entropy run over at most `chunk_tokens` scored tokens at a time, each chunk under activation
checkpointing: backward recomputes one chunk's logits at a time instead of keeping every chunk's. Tokens
labelled -100 (prompt, padding) get no logits at all.

The value is the model's own loss (transformers' ForCausalLMLoss: next-token cross-entropy, mean over the
labelled tokens) up to floating-point summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Output transforms between lm_head and the loss that this function does not apply (Gemma 2's soft cap,
# Cohere's logit scale): such a model must compute its own loss.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale")


def _causal_lm(model):
    """The transformers *ForCausalLM under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunk_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_tokens: int) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` (input_ids, labels, attention_mask...) under `model`, its logits
    built `chunk_tokens` tokens at a time. A batch with no labelled token gives a zero loss (still a graph)."""
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be 0 (one chunk) or more, got {chunk_tokens}")
    lm = _causal_lm(model)
    for name in _UNSUPPORTED_LOGIT_TRANSFORMS:
        if getattr(lm.config, name, None) and chunk_tokens == 0:
            return model(**batch).loss  # the model's own loss applies its transform; only chunking needs ours
        if getattr(lm.config, name, None):
            raise ValueError(f"{type(lm).__name__} applies {name} to its logits: chunked loss does not support it "
                             "(use a method that computes its own loss)")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    decoder = getattr(lm, lm.base_model_prefix)  # LlamaModel etc.: hidden states, no logits
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    labels = batch["labels"].to(hidden.device)
    # position t predicts token t + 1, as the model's own loss shifts them
    hidden, labels = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    scored = labels != IGNORE_INDEX
    hidden, labels = hidden[scored], labels[scored]
    if labels.numel() == 0:
        return hidden.sum() * 0.0
    lm_head = lm.get_output_embeddings()
    if chunk_tokens == 0 or chunk_tokens >= labels.numel():  # one chunk: nothing to recompute
        return _chunk_loss_sum(hidden, labels, lm_head) / labels.numel()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, hidden[start:end], labels[start:end], lm_head, use_reentrant=False)
    return total / labels.numel()
