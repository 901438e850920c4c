"""QLoRA's preparation of a 4-bit base (trainers/adapters.py): frozen, checkpointed, and nothing upcast to fp32."""

from __future__ import annotations

import torch

from trainers.adapters import attach_lora
from trainers.models import QuantSettings, build_preset, load_base_model


def test_nf4_base_keeps_embedding_and_lm_head_in_the_compute_dtype():
    base = load_base_model(build_preset("tiny-llama"), QuantSettings(compute_dtype="bfloat16"))
    model = attach_lora(base, rank=4, alpha=8, dropout=0.0, target_modules="all-linear", gradient_checkpointing=True)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    frozen_floats = {p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.is_floating_point()}
    assert frozen_floats == {torch.bfloat16}  # norms too: no fp32 residual stream
    trainable = [(n, p.dtype) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and dtype == torch.float32 for n, dtype in trainable)
    assert model.is_gradient_checkpointing
    ids = torch.randint(7, 300, (2, 12))
    model.train()(input_ids=ids, labels=ids).loss.backward()  # checkpointed blocks still reach the adapters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # A gets none while B is 0
