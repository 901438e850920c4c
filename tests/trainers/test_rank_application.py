"""`adapter.rank_application`: slicing the factors and masking them are the same DyLoRA numbers; the mask keeps
QLoRA r_max's shapes every step, and training applies the compute dtype through autocast."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.conftest import tiny_job
from trainers.finetune import FinetuneRecipe
from trainers.methods.qdylora import RankTruncatedLinear, attach_dynamic_rank, set_active_rank
from trainers.methods.qdylora.layer import resolve_rank_application
from trainers.models import load_base_model, resolve_base

R_MAX, ALPHA = 8, 16.0


def _dynamic(application: str):
    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    # Seeded after the load: the first load in a fresh DYRANK_HOME builds the tiny model, drawing from this RNG.
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=R_MAX, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    attach_dynamic_rank(model, application=application)
    with torch.no_grad():  # PEFT starts B at zero, which would make every rank look the same
        for index, (name, p) in enumerate(model.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(index))
    return model


@pytest.fixture(scope="module")
def pair():
    return _dynamic("slice"), _dynamic("mask")


IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("rank", [1, 3, R_MAX])
def test_mask_gives_the_slices_logits_and_gradients(pair, rank):
    outputs, grads = [], []
    for model in pair:
        model.zero_grad(set_to_none=True)
        set_active_rank(model, rank)
        out = model(input_ids=IDS, labels=IDS)
        out.loss.backward()
        outputs.append(out.logits.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        # the same sums in another order (scale before B instead of after): fp32 rounding, relative to the layer's size
        scale = grads[0][name].abs().max().item()
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4 * scale, rtol=1e-4, msg=name)


def test_mask_keeps_full_shapes_and_rewrites_its_scale_in_place(pair):
    _, masked = pair
    factors = [m for m in masked.modules() if isinstance(m, RankTruncatedLinear)]
    a = next(m for m in factors if m.rank_dim == 0)
    scale_storage = a.rank_scale.data_ptr()
    for rank in (2, 5):
        set_active_rank(masked, rank)
        assert all(m.used_weight().shape == m.weight.shape for m in factors)
        expected = torch.tensor([ALPHA / rank] * rank + [0.0] * (R_MAX - rank))
        torch.testing.assert_close(a.rank_scale, expected)
    assert a.rank_scale.data_ptr() == scale_storage  # one device buffer, rewritten: nothing to re-capture
    assert not any("rank_scale" in key for key in masked.state_dict())  # the saved adapter is PEFT's


def test_auto_is_slice_on_the_cpu_and_mask_on_a_gpu():
    assert resolve_rank_application("auto", "cpu") == "slice"
    assert resolve_rank_application("auto", "cuda") == "mask"
    assert resolve_rank_application("mask", "cpu") == "mask"


def _trained_factors(tmp_path, application: str, compute: str = "float32") -> dict:
    job = tiny_job("adapter.method=qdylora", "adapter.r_max=8", f"adapter.rank_application={application}",
                   f"quantization.compute_dtype={compute}", "training.max_steps=3")
    recipe = FinetuneRecipe(job, tmp_path / application, progress=False)
    recipe.setup()
    recipe.model.train()
    for step in range(3):
        recipe.train_step(step)
    return {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}


def test_training_with_the_mask_reaches_the_slices_weights(tmp_path):
    sliced, masked = _trained_factors(tmp_path, "slice"), _trained_factors(tmp_path, "mask")
    assert sliced.keys() == masked.keys()
    moved = 0
    for name in sliced:
        torch.testing.assert_close(masked[name], sliced[name], atol=2e-5, rtol=1e-4, msg=name)
        moved += int("lora_B" in name and sliced[name].abs().sum() > 0)
    assert moved > 0  # the steps trained something: equal zeros would prove nothing


def test_training_runs_under_autocast_in_the_compute_dtype(tmp_path):
    seen = {}
    for compute in ("bfloat16", "float32"):
        job = tiny_job("adapter.method=qdylora", "adapter.r_max=8", f"quantization.compute_dtype={compute}",
                       "training.max_steps=1")
        recipe = FinetuneRecipe(job, tmp_path / compute, progress=False)
        recipe.setup()
        recipe.model.train()
        head = recipe.model.get_output_embeddings()
        a = next(m for m in recipe.model.modules() if isinstance(m, RankTruncatedLinear))
        dtypes = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype)) for m in (head, a)]
        recipe.train_step(0)
        for hook in hooks:
            hook.remove()
        seen[compute] = set(dtypes)
        assert a.weight.dtype == torch.float32  # adapter weights (and so their optimizer states) stay fp32
    assert seen == {"bfloat16": {torch.bfloat16}, "float32": {torch.float32}}
