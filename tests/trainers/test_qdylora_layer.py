"""The DyLoRA math on PEFT layers: truncation, scaling, gradients, and no copies of the full factors."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trainers.models import load_base_model, resolve_base
from trainers.methods.qdylora import RankTruncatedLinear, attach_dynamic_rank, get_active_rank, set_active_rank

R_MAX, ALPHA = 8, 16.0


def _lora(rank: int, dropout: float = 0.0):
    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    config = LoraConfig(r=rank, lora_alpha=ALPHA, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


@pytest.fixture(scope="module")
def dynamic_model():
    torch.manual_seed(0)
    model = _lora(R_MAX)
    attach_dynamic_rank(model)
    with torch.no_grad():  # PEFT starts B at zero, which would make every rank look the same
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.eval()


def _factors(model):
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("rank", [1, 3, R_MAX])
def test_truncated_forward_equals_plain_lora_of_that_rank(dynamic_model, rank):
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    set_active_rank(dynamic_model, rank)
    dynamic_logits = dynamic_model(input_ids=ids).logits

    plain = _lora(rank).eval()  # PEFT scales a rank-r LoRA by alpha / r
    source = _factors(dynamic_model)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if "lora_A" in name:
                p.copy_(source[name][:rank])
            elif "lora_B" in name:
                p.copy_(source[name][:, :rank])
    torch.testing.assert_close(dynamic_logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_ranks_give_different_outputs(dynamic_model):
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(2))
    outputs = []
    for rank in (1, 4, R_MAX):
        set_active_rank(dynamic_model, rank)
        outputs.append(dynamic_model(input_ids=ids).logits)
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])


def test_scaling_and_active_rank_are_set_in_every_layer(dynamic_model):
    set_active_rank(dynamic_model, 5)
    assert get_active_rank(dynamic_model) == 5
    layers = [m for m in dynamic_model.modules() if hasattr(m, "scaling") and "default" in getattr(m, "lora_A", {})]
    assert layers and all(m.scaling["default"] == pytest.approx(ALPHA / 5) for m in layers)


def test_truncation_is_a_view_not_a_copy(dynamic_model):
    set_active_rank(dynamic_model, 3)
    factor = next(m for m in dynamic_model.modules() if isinstance(m, RankTruncatedLinear))
    view = factor.used_weight()
    assert view.data_ptr() == factor.weight.data_ptr()
    assert view.shape[factor.rank_dim] == 3


@pytest.mark.parametrize("rank", [0, R_MAX + 1])
def test_rank_out_of_range_is_rejected(dynamic_model, rank):
    with pytest.raises(ValueError, match="outside"):
        set_active_rank(dynamic_model, rank)


@pytest.mark.parametrize("application", ["slice", "mask"])
@pytest.mark.parametrize("mode", ["cumulative", "frozen"])
def test_gradients_reach_only_the_ranks_the_mode_allows(mode, application):
    torch.manual_seed(0)
    model = _lora(R_MAX)
    attach_dynamic_rank(model, update_mode=mode, application=application)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    b = 5
    set_active_rank(model, b)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    model(input_ids=ids, labels=ids).loss.backward()
    checked = 0
    for name, p in _factors(model).items():
        # per-rank gradient magnitude: rows of A, columns of B
        per_rank = p.grad.abs().sum(dim=1) if "lora_A" in name else p.grad.abs().sum(dim=0)
        assert torch.all(per_rank[b:] == 0), f"{name}: ranks above b got gradients"
        assert per_rank[b - 1] > 0, f"{name}: rank b got no gradient"
        if mode == "frozen":
            assert torch.all(per_rank[: b - 1] == 0), f"{name}: frozen mode let ranks below b learn"
        else:
            assert torch.all(per_rank[: b - 1] > 0), f"{name}: cumulative mode left ranks below b without gradient"
        checked += 1
    assert checked > 0
