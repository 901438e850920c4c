"""Every method through the one recipe on the tiny model: it trains, its loss on a fixed batch falls, its peak memory holds at least its weights and optimizer state, it is scored, its export loads."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from evaluators.metrics import evaluate
from evaluators.session import EvalSession
from tests.conftest import Interrupt, stop_at, tiny_job
from tests.trainers.fixed_batch import fixed_batch_loss
from trainers.finetune import FinetuneRecipe, train

SIXTEEN_BIT = ("quantization.load_in_4bit=false",)
FAST = ("training.max_steps=16", "training.lr=5e-3", "training.gradient_checkpointing=false", "baselines.ranks=[]",
        "training.checkpoint_every=1000", "evaluation.max_samples=16")
METHODS = {
    "lora": ("adapter.method=lora", "adapter.rank=4", *SIXTEEN_BIT),
    "dylora": ("adapter.method=dylora", "adapter.r_max=4", *SIXTEEN_BIT),
    "adalora": ("adapter.method=adalora", "adapter.rank=2", "adapter.adalora.init_r=4", "adapter.adalora.tinit=2",
                "adapter.adalora.tfinal=4", *SIXTEEN_BIT),
    "bitlora-1": ("adapter.method=bitlora", "adapter.rank=4", "adapter.bitlora.bits='1'"),
    "bitlora-1.58": ("adapter.method=bitlora", "adapter.rank=4", "adapter.bitlora.bits='1.58'"),
    "galore": ("adapter.method=galore", "training.lr=1e-3", "adapter.galore.update_proj_gap=5", *SIXTEEN_BIT),
    "galore8bit": ("adapter.method=galore8bit", "training.lr=1e-3", "adapter.galore.update_proj_gap=5", *SIXTEEN_BIT),
    "lora-bf16": ("adapter.method=lora", "adapter.rank=4", *SIXTEEN_BIT, "quantization.base_dtype=bfloat16"),
    "galore-bf16": ("adapter.method=galore", "training.lr=1e-3", *SIXTEEN_BIT, "quantization.base_dtype=bfloat16"),
}


def _optimizer_state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_records_costs_and_its_export_scores_as_trained(tmp_path, name):
    cfg = tiny_job(*FAST, *METHODS[name])
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    before = fixed_batch_loss(recipe)
    result = recipe.train()
    after = fixed_batch_loss(recipe)
    assert after < before - 0.1, (before, after)

    costs = asdict(result.costs)
    assert costs["trainable_params"] > 0 and costs["step_seconds"] > 0
    assert costs["peak_memory_kind"] == ("cuda_max_allocated" if torch.cuda.is_available() else "cpu_peak_rss_delta")
    trainable = [p for p in recipe.model.parameters() if p.requires_grad]
    # all held at once during optimizer.step(), all allocated after the measurement started
    must_hold = sum(p.numel() * p.element_size() for p in trainable) + _optimizer_state_bytes(recipe.optimizer)
    assert costs["peak_memory_bytes"] >= must_hold
    assert costs["adapter_bytes"] == sum(p.stat().st_size for p in result.adapter_dir.iterdir())
    total = sum(p.numel() for p in recipe.model.parameters())
    full = name.startswith("galore")
    assert (costs["trainable_params"] == total) if full else (costs["trainable_params"] < total / 4)

    session = EvalSession(cfg)  # the evaluators' code: what was saved loads onto a fresh base and is scored
    zero_shot = session.score("validation", rank=None)["eval_loss"]
    session.attach_adapter_dir(result.adapter_dir)
    scored = session.score("validation", rank=cfg.adapter.full_rank)["eval_loss"]
    trained = evaluate(recipe.model.eval(), session.examples["validation"], session.tokenizer, 8)["eval_loss"]
    # the same numbers as the model in memory (4-bit: the evaluators dequantize the base once, bf16 rounding)
    exact = not cfg.quantization.load_in_4bit and cfg.quantization.base_dtype == "float32"
    assert scored == pytest.approx(trained, rel=1e-5 if exact else 1e-2)
    if cfg.quantization.base_dtype == "bfloat16":  # a true 16-bit base: the frozen (or trained) weights are bf16
        assert next(session.model.parameters()).dtype == torch.bfloat16
    assert scored != pytest.approx(zero_shot, abs=1e-6)
    assert session.score("validation", rank=None)["eval_loss"] == pytest.approx(zero_shot, rel=1e-6)


def test_adalora_allocates_after_each_step_before_zero_grad_and_records_the_allocation(tmp_path):
    cfg = tiny_job(*FAST, *METHODS["adalora"])
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    calls, allocate = [], recipe.model.base_model.update_and_allocate

    def spy(step):
        has_grads = any(p.grad is not None for n, p in recipe.model.named_parameters() if "lora_" in n)
        calls.append((step, has_grads))
        return allocate(step)

    recipe.model.base_model.update_and_allocate = spy
    recipe.train()
    assert calls == [(s, True) for s in range(1, 17)]  # 1-based optimizer steps, gradients still there

    allocation = json.loads((tmp_path / "method_artifacts.json").read_text())["rank_allocation"]
    assert len(allocation) == 14 and all(0 <= r <= 4 for r in allocation.values())
    assert sum(allocation.values()) == 2 * 14  # the final budget: target rank 2 on average
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["rank_pattern"]


def test_galore_projects_with_a_clamped_rank_and_saves_full_weights(tmp_path):
    cfg = tiny_job(*FAST, *METHODS["galore8bit"])
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    result = recipe.train()
    artifacts = json.loads((tmp_path / "method_artifacts.json").read_text())["galore"]
    assert artifacts == {"rank": 16, "configured_rank": 128, "projected_weights": 14}  # k/v are 32 wide: 128 -> 16
    q_proj = recipe.model.model.layers[0].self_attn.q_proj.weight  # 64 x 64, projected to 16 x 64
    state = recipe.optimizer.state[q_proj]
    assert state["state1"].dtype == torch.uint8 and sorted(state["state1"].shape) == [16, 64]  # grad @ P: (64, 16)
    weights = load_file(result.adapter_dir / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in weights and not (result.adapter_dir / "adapter_config.json").exists()


@pytest.mark.parametrize("method", ["galore", "galore8bit"])
def test_galore_resume_reaches_the_same_final_weights(tmp_path, method):
    # the projector (its matrix, refreshed every 3 steps) is optimizer state: it must survive the checkpoint
    overrides = (*FAST, *METHODS[method], "training.max_steps=8", "training.checkpoint_every=4", "adapter.galore.update_proj_gap=3")
    straight = train(tiny_job(*overrides), tmp_path / "straight", progress=False)
    with pytest.raises(Interrupt):
        train(tiny_job(*overrides), tmp_path / "cut", on_step=stop_at(6), progress=False)
    resumed = train(tiny_job(*overrides), tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 4
    a, b = load_file(straight.adapter_dir / "model.safetensors"), load_file(resumed.adapter_dir / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
