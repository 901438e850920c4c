"""The training loss, computed only where it is defined: next-token cross-entropy at completion positions.

A causal LM's `forward(labels=...)` projects *every* position through the full-vocabulary `lm_head` and then
ignores the prompt positions (label -100). On instruction data the prompt is most of the sequence (countries:
~60 prompt tokens, ~6 answer tokens), and the head is a fifth of SmolLM2's FLOPs. So: run the decoder, keep
the last hidden states at the positions whose next token is scored, and project only those:

    loss = mean over scored positions t of  CE(lm_head(h_t), label_{t+1})

the same number as transformers' `ForCausalLMLoss` (fp32 cross-entropy, mean over scored tokens), within the
rounding of a matmul over fewer rows. Methods whose loss is more than this (AdaLoRA adds a regulariser inside
its own forward) keep the model's forward (`TrainingMethod.training_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.batching import IGNORE_INDEX


def completion_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the HF model
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    picked = hidden[:, :-1][scored]  # (scored tokens, hidden): position t predicts token t+1
    logits = causal_lm.get_output_embeddings()(picked).float()
    return F.cross_entropy(logits, targets[scored])
