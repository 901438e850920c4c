"""The training recipe: a real NF4 base trains (on the CPU here, on CUDA where present), ranks are sampled per step, resume is exact."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Interrupt, stop_at, tiny_job
from tests.trainers.fixed_batch import fixed_batch_loss
from tests.trainers.test_rank_sampler import assert_uniform
from trainers.finetune import FinetuneRecipe, train
from trainers.methods.qdylora import RankTruncatedLinear


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_nf4_base_trains(tmp_path):
    cfg = tiny_job("training.max_steps=30", "training.lr=0.005")
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()

    targets = [m for m in recipe.model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert len(targets) == 2 * 7  # q k v o gate up down in each of 2 blocks; never lm_head
    for layer in targets:
        assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
        state = layer.base_layer.weight.quant_state
        assert state.quant_type == "nf4" and state.nested, "NF4 with double quantization"
        assert isinstance(layer.lora_A["default"], RankTruncatedLinear)
    assert not isinstance(recipe.model.base_model.model.lm_head, bnb.nn.Linear4bit)

    before = fixed_batch_loss(recipe)
    recipe.train()
    after = fixed_batch_loss(recipe)
    assert after < before - 0.1, (before, after)


def test_one_sampled_rank_per_step_shared_by_its_micro_batches(tmp_path):
    steps, accum = 240, 2
    cfg = tiny_job(f"training.max_steps={steps}", f"training.grad_accum_steps={accum}", "adapter.r_max=4",
                      "training.batch_size=2", "data.max_seq_len=24", "quantization.load_in_4bit=false",
                      "training.gradient_checkpointing=false", "training.checkpoint_every=1000")
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    seen = []  # active rank at every micro-batch forward, read inside the model
    factor = next(m for m in recipe.model.modules() if isinstance(m, RankTruncatedLinear))
    factor.register_forward_hook(lambda mod, inp, out: seen.append(mod.active_rank))
    recipe.train()

    recorded = [m["rank"] for m in _metrics(tmp_path)]
    assert len(recorded) == steps
    assert seen == [r for r in recorded for _ in range(accum)], "rank changed inside an optimizer step"
    assert_uniform(recorded, 1, 4)


def test_resume_reaches_the_same_final_weights(tmp_path):
    overrides = ("training.max_steps=12", "training.checkpoint_every=4", "training.keep_checkpoints=1")
    straight = train(tiny_job(*overrides), tmp_path / "straight", progress=False)

    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train(tiny_job(*overrides), cut, on_step=stop_at(10), progress=False)
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step-00000008"]
    resumed = FinetuneRecipe(tiny_job(*overrides), cut, progress=False)
    resumed.setup()
    assert resumed.start_step == 8
    resumed.train()

    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(cut / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [m["rank"] for m in _metrics(cut)] == [m["rank"] for m in _metrics(tmp_path / "straight")]


def test_frozen_mode_moves_only_the_sampled_rank(tmp_path):
    """The first step at rank b, NF4 base with gradient checkpointing: in frozen mode only rank b (row b-1 of A,
    column b-1 of B) changes; ranks below b get no gradient and AdamW has no momentum yet, so they stay exact."""
    cfg = tiny_job("training.max_steps=1", "adapter.update_mode=frozen", "adapter.r_min=3", "adapter.r_max=8",
                   "training.warmup_ratio=0")
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    assert recipe.cfg.quantization.load_in_4bit and recipe.cfg.training.gradient_checkpointing
    layers = [m for m in recipe.model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    before = [(m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone()) for m in layers]
    b = recipe.train_step(0)["rank"]
    assert 3 <= b <= 8
    moved_a = moved_b = 0
    for layer, (a0, b0) in zip(layers, before):
        a1, b1 = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        assert torch.equal(a1[:b - 1], a0[:b - 1]) and torch.equal(b1[:, :b - 1], b0[:, :b - 1]), "a rank below b moved"
        assert torch.equal(a1[b:], a0[b:]) and torch.equal(b1[:, b:], b0[:, b:]), "a rank above b moved"
        moved_a += not torch.equal(a1[b - 1], a0[b - 1])
        moved_b += not torch.equal(b1[:, b - 1], b0[:, b - 1])
    assert moved_b == len(layers)  # B starts at zero: A gets no gradient until B has moved, so only B is checked


@pytest.mark.gpu
def test_training_runs_on_cuda_with_a_paged_optimizer(tmp_path):
    cfg = tiny_job("training.max_steps=3")
    recipe = FinetuneRecipe(cfg, tmp_path, progress=False)
    recipe.setup()
    assert next(p for p in recipe.model.parameters() if p.requires_grad).is_cuda
    assert isinstance(recipe.optimizer, bnb.optim.PagedAdamW32bit) and recipe.optimizer.is_paged
    result = recipe.train()
    trainable = [p for p in recipe.model.parameters() if p.requires_grad]
    states = [recipe.optimizer.state[p] for p in trainable]
    on_card = [s[k].is_cuda or getattr(s[k], "is_paged", False) for s in states for k in ("state1", "state2")]
    assert on_card and all(on_card), "both AdamW moments in device or unified memory, never left on the host"
    state_bytes = sum(t.numel() * t.element_size() for s in states for t in s.values() if torch.is_tensor(t))
    assert result.costs.peak_memory_kind == "cuda_max_allocated"
    assert result.costs.peak_memory_bytes >= sum(p.numel() * p.element_size() for p in trainable) + state_bytes
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert all(v.isfinite().all() for v in saved.values())
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items()), "B left zero: no step"


@pytest.mark.gpu
def test_paged_optimizer_pages_large_states_on_cuda():
    from trainers.optim import build_optimizer

    # bitsandbytes pages only states of at least 1e5 elements; smaller ones stay in device memory.
    big = torch.nn.Parameter(torch.randn(512, 512, device="cuda"))
    optimizer = build_optimizer("paged_adamw_32bit", [big], lr=1e-3, weight_decay=0.0)
    big.grad = torch.randn_like(big)
    optimizer.step()
    assert getattr(optimizer.state[big]["state1"], "is_paged", False)
