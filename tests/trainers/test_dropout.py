"""UniformDropout is nn.Dropout's distribution: kept with probability 1 - p, scaled by 1 / (1 - p), identity in eval."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainers.dropout import UniformDropout, use_uniform_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_and_scale(p):
    torch.manual_seed(0)
    n = 200_000
    out = UniformDropout(p).train()(torch.ones(n))
    kept = out != 0
    # the kept share is Binomial(n, 1 - p): 5 standard deviations is a bound a correct draw never crosses
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / (1 - p)))


def test_gradient_is_the_same_mask_and_eval_is_identity():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    dropout = UniformDropout(0.3).train()
    out = dropout(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.7)
    x_eval = torch.randn(8, 8)
    assert torch.equal(dropout.eval()(x_eval), x_eval)


def test_replaces_every_lora_dropout_of_a_peft_model():
    from peft import LoraConfig, get_peft_model

    from trainers.models import load_base_model, resolve_base

    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    model = get_peft_model(base, LoraConfig(r=2, lora_dropout=0.2, target_modules="all-linear", task_type="CAUSAL_LM"))
    count = use_uniform_dropout(model)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert count > 0 and len(dropouts) == count
    assert all(type(m) is UniformDropout and m.p == 0.2 for m in dropouts)
