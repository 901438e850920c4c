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

from trainers.batching import IGNORE_INDEX

# Output transforms between lm_head and the loss (Gemma 2's soft cap, Cohere's logit scale, Granite's scaling): a
# model with one computes its own logits; bypassing its head would score something else.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def decoder_and_head(model):
    """(decoder, lm_head) of a causal LM (under a PEFT wrapper or not) when its logits are exactly
    lm_head(decoder(...).last_hidden_state), else None. Training and evaluation both score through it."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(causal, causal.base_model_prefix, causal), causal.get_output_embeddings()
    if decoder is causal or head is None or any(getattr(causal.config, k, None) for k in LOGIT_TRANSFORMS):
        return None
    return decoder, head


def _chunk_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_tokens: int) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` (input_ids, labels, attention_mask...) under `model`, its logits
    built `chunk_tokens` tokens at a time. A batch with no labelled token gives a zero loss (still a graph)."""
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be 0 (one chunk) or more, got {chunk_tokens}")
    parts = decoder_and_head(model)
    if parts is None and chunk_tokens == 0:
        return model(**batch).loss  # the model's own loss applies its logit transform
    if parts is None:
        raise ValueError(f"{type(model).__name__} transforms its logits after the lm_head: a chunked loss cannot "
                         "apply that (set training.loss_chunk_tokens: 0)")
    decoder, lm_head = parts
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    labels = batch["labels"].to(hidden.device)
    # position t predicts token t + 1, as the model's own loss shifts them
    hidden, labels = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    scored = labels != IGNORE_INDEX
    hidden, labels = hidden[scored], labels[scored]
    if labels.numel() == 0:
        return hidden.sum() * 0.0
    if chunk_tokens == 0 or chunk_tokens >= labels.numel():  # one chunk: nothing to recompute
        return _chunk_loss_sum(hidden, labels, lm_head) / labels.numel()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, hidden[start:end], labels[start:end], lm_head, use_reentrant=False)
    return total / labels.numel()
