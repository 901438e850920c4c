"""qlora-svd: one QLoRA run at r_max truncated by SVD. At r_max it is the trained QLoRA adapter; each prefix is the
best truncation; its rank-b export is a plain PEFT adapter that reproduces the swept metric."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from evaluators.metrics import evaluate
from evaluators.session import EvalSession
from tests.conftest import tiny_job
from trainers.finetune import train
from trainers.methods.base import read_adapter_meta
from trainers.methods.qdylora import attach_dynamic_rank, export_rank, get_active_rank, set_active_rank
from trainers.methods.qlora_svd.layer import svd_ordered_factors
from trainers.methods.qlora_svd.model import svd_order_adapter
from trainers.models import load_base_model, resolve_base

R_MAX, ALPHA = 8, 16.0
FP32 = ("quantization.load_in_4bit=false", "training.max_steps=6", "training.gradient_checkpointing=false",
        "training.lr=0.01", "evaluation.max_samples=12")


def test_factors_keep_the_update_and_prefixes_are_the_best_truncations():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 12, generator=gen, dtype=torch.float64), torch.randn(20, 6, generator=gen, dtype=torch.float64)
    new_a, new_b = svd_ordered_factors(a, b)
    torch.testing.assert_close(new_b @ new_a, b @ a, rtol=1e-10, atol=1e-10)
    u, s, vh = torch.linalg.svd(b @ a)  # the d x d reference the method itself never computes
    for rank in (1, 3, 5):
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]
        torch.testing.assert_close(new_b[:, :rank] @ new_a[:rank], best, rtol=1e-9, atol=1e-9)


def test_a_layer_narrower_than_the_rank_keeps_its_shapes():
    a, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    new_a, new_b = svd_ordered_factors(a, b)
    assert new_a.shape == a.shape and new_b.shape == b.shape
    torch.testing.assert_close(new_b @ new_a, b @ a, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same seed and data: a QLoRA run at r_max and a qlora-svd run (which trains exactly that, then reorders)."""
    out = tmp_path_factory.mktemp("svd")
    qlora = train(tiny_job(*FP32, "adapter.method=qlora", f"adapter.rank={R_MAX}", f"evaluation.ranks=[{R_MAX}]"),
                  out / "qlora", progress=False)
    svd_cfg = tiny_job(*FP32, "adapter.method=qlora-svd", f"adapter.r_max={R_MAX}")
    svd = train(svd_cfg, out / "svd", progress=False)
    return qlora.adapter_dir, svd.adapter_dir, svd_cfg


def _model(adapter_dir, rank=None, scale_rank=None):
    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    if rank is not None:
        attach_dynamic_rank(model)
        set_active_rank(model, rank, scale_rank=scale_rank)
    return model


IDS = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def test_at_r_max_it_is_the_trained_qlora_adapter(runs):
    qlora_dir, svd_dir, _ = runs
    meta = read_adapter_meta(svd_dir)
    assert meta["dynamic"] and meta["scaling"] == "alpha/r_max" and meta["r_max"] == R_MAX
    expected = _model(qlora_dir)(input_ids=IDS).logits
    torch.testing.assert_close(_model(svd_dir, R_MAX, R_MAX)(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)
    # The grid's own QLoRA r_max adapter, reordered instead of trained again, is the same adapter.
    reused = svd_order_adapter(qlora_dir, qlora_dir.parent / "reused")
    for key, tensor in load_file(reused / "adapter_model.safetensors").items():
        torch.testing.assert_close(tensor, load_file(svd_dir / "adapter_model.safetensors")[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3])
def test_rank_b_export_is_plain_peft_with_the_truncated_delta_and_the_swept_metric(runs, tmp_path, rank):
    _, svd_dir, cfg = runs
    out = export_rank(svd_dir, rank, tmp_path / f"r{rank}")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == rank and config["lora_alpha"] == pytest.approx(ALPHA * rank / R_MAX)  # alpha/r = alpha/r_max

    plain = _model(out)  # plain PEFT: nothing of ours attached
    weights = load_file(svd_dir / "adapter_model.safetensors")
    layer = next(m for m in plain.modules() if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {}))
    name = next(k for k in weights if ".lora_A." in k and layer.lora_A["default"].weight.shape[1] == weights[k].shape[1])
    truncated = weights[name.replace("lora_A", "lora_B")][:, :rank] @ weights[name][:rank] * (ALPHA / R_MAX)
    key = name.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
    delta = dict(plain.base_model.model.named_modules())[key].get_delta_weight("default")
    assert (delta - truncated).norm() <= 1e-5 * truncated.norm()

    session = EvalSession(cfg)  # the sweep's own path: the adapter's meta says the scale is alpha/r_max
    session.attach_adapter_dir(svd_dir)
    swept = session.score("validation", rank)["eval_loss"]
    assert evaluate(plain, session.examples["validation"], session.tokenizer, 8)["eval_loss"] == pytest.approx(swept, rel=1e-5)
    session.scale_rank = None  # DyLoRA's alpha/b on these factors would be another model: the meta matters
    assert session.score("validation", rank)["eval_loss"] != pytest.approx(swept, rel=1e-4)


def test_the_fixed_scale_holds_in_mask_mode_and_in_the_batched_multi_rank_forward(runs):
    """alpha/r_max at every rank whichever way a rank is applied: mask mode's rank_scale buffer, and the
    evaluator's several-ranks-per-forward row mask (trainers/methods/qdylora/multirank.py)."""
    _, svd_dir, cfg = runs
    base = load_base_model(resolve_base("tiny-llama"), quant=None, device=torch.device("cpu"))
    masked = PeftModel.from_pretrained(base, str(svd_dir)).eval()
    attach_dynamic_rank(masked, application="mask")
    set_active_rank(masked, 3, scale_rank=R_MAX)
    expected = _model(svd_dir, 3, R_MAX)(input_ids=IDS).logits
    torch.testing.assert_close(masked(input_ids=IDS).logits, expected, atol=1e-5, rtol=1e-5)

    one_at_a_time = EvalSession(cfg)
    one_at_a_time.attach_adapter_dir(svd_dir)
    batched = EvalSession(cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"ranks_per_forward": 2})}))
    batched.attach_adapter_dir(svd_dir)
    assert one_at_a_time.ranks_per_forward() == 1 and batched.ranks_per_forward() == 2
    set_active_rank(batched.model, 2, scale_rank=R_MAX)  # below r_max, where alpha/2 and alpha/r_max differ
    for alone, together in zip(one_at_a_time.score_ranks("validation", [1, 3]), batched.score_ranks("validation", [1, 3])):
        assert together.metrics["eval_loss"] == pytest.approx(alone.metrics["eval_loss"], rel=1e-5)
    assert get_active_rank(batched.model) == 2  # the batched forward leaves the rank it found, at the same scale
    expected = _model(svd_dir, 2, R_MAX)(input_ids=IDS).logits
    torch.testing.assert_close(batched.model(input_ids=IDS).logits, expected, atol=1e-5, rtol=1e-5)
