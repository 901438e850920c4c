"""The completion-only training loss is transformers' causal-LM loss, computed on fewer rows."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from trainers.batching import IGNORE_INDEX, collate
from trainers.loss import completion_loss
from trainers.models import load_base_model, resolve_base


def _batch():
    g = torch.Generator().manual_seed(0)
    examples = []
    for prompt_len, answer_len in ((9, 3), (14, 5), (5, 1)):  # ragged: right padding differs per row
        ids = torch.randint(6, 300, (prompt_len + answer_len,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return collate(examples, pad_id=0)


def test_equals_the_models_own_loss_and_its_gradients():
    torch.manual_seed(0)
    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = _batch()
    grads = []
    for loss_fn in (lambda: model(**batch).loss, lambda: completion_loss(model, **batch)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (reference, ref_grads), (ours, our_grads) = grads
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(our_grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)
