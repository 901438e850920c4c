"""The memory planner's exact parts (parameter counts, NF4 bytes, LoRA sizes) checked against real models, and
its activation term's shape; its whole-peak accuracy is measured on a GPU (bench/p4_memory.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from trainers.adapters import attach_lora
from trainers.memory_estimate import estimate_evaluation, estimate_training, model_shape, nf4_bytes
from trainers.models import QuantSettings, build_preset, load_base_model

TRAIN = dict(rank=8, batch=4, seq=64, compute_dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def tiny():
    path = build_preset("tiny-llama")
    return path, AutoConfig.from_pretrained(path)


def test_counts_match_the_real_model(tiny):
    path, config = tiny
    shape = model_shape(config)
    model = AutoModelForCausalLM.from_pretrained(path)
    linears = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings())
    assert shape.quantizable == linears
    assert shape.quantizable + shape.other == sum(p.numel() for p in model.parameters())


def test_tied_embeddings_are_counted_once():
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    tied = model_shape(LlamaConfig(**{**config.to_dict(), "tie_word_embeddings": True}))
    untied = model_shape(LlamaConfig(**{**config.to_dict(), "tie_word_embeddings": False}))
    assert untied.other - tied.other == 1000 * 64


def test_lora_size_matches_peft(tiny):
    path, config = tiny
    for targets in ("all-linear", ["q_proj", "v_proj"]):
        model = attach_lora(load_base_model(path), rank=8, alpha=16, dropout=0.0, target_modules=targets,
                            dynamic=False, gradient_checkpointing=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert 8 * model_shape(config, targets).lora_per_rank == trainable


def test_nf4_weights_match_bitsandbytes_storage(tiny):
    path, config = tiny
    model = attach_lora(load_base_model(path, QuantSettings()), rank=8, alpha=16, dropout=0.0,
                        target_modules="all-linear", dynamic=False, gradient_checkpointing=True)
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    stored = sum(p.numel() * p.element_size() for p in base)
    stored += sum(p.quant_state.absmax.numel() * p.quant_state.absmax.element_size()
                  + p.quant_state.state2.absmax.numel() * p.quant_state.state2.absmax.element_size()
                  for p in base if getattr(p, "quant_state", None) is not None)
    estimate = estimate_training(model_shape(config), load_in_4bit=True, **TRAIN)
    assert estimate.weights == pytest.approx(stored, rel=0.02)


def test_nf4_is_about_an_eighth_of_fp32():
    assert nf4_bytes(64 * 256 * 100, double_quant=True) / (64 * 256 * 100 * 4) == pytest.approx(0.129, abs=0.001)
    assert nf4_bytes(6400, double_quant=False) > nf4_bytes(6400, double_quant=True)


def test_activations_grow_with_tokens_and_shrink_with_checkpointing(tiny):
    shape = model_shape(tiny[1])
    small = estimate_training(shape, load_in_4bit=True, **TRAIN)
    more = estimate_training(shape, load_in_4bit=True, **{**TRAIN, "batch": 8})
    full = estimate_training(shape, load_in_4bit=True, gradient_checkpointing=False, **TRAIN)
    assert more.activations > small.activations and full.activations > small.activations
    assert small.gradients == small.trainable and small.optimizer == 2 * small.trainable


def test_evaluator_dequantized_base_costs_16_bit_weights(tiny):
    shape = model_shape(tiny[1])
    kw = dict(rank=8, batch=4, seq=64, load_in_4bit=True, compute_dtype=torch.bfloat16)
    nf4 = estimate_evaluation(shape, dequantize=False, **kw)
    bf16 = estimate_evaluation(shape, dequantize=True, **kw)
    assert bf16.weights == (shape.quantizable + shape.other) * 2 > nf4.weights
    assert nf4.gradients == nf4.optimizer == 0


def test_galore_keeps_full_weights_and_gradients_but_projected_moments(tiny):
    from trainers.methods.galore.memory import estimate_galore

    shape = model_shape(tiny[1])
    full = estimate_galore(shape, rank=10**6, batch=4, seq=64, base_dtype=torch.float32)  # clamped to half the smallest side
    small = estimate_galore(shape, rank=2, batch=4, seq=64, base_dtype=torch.float32)
    params = shape.quantizable + shape.other
    assert full.weights == full.gradients == params * 4 and full.trainable == 0
    assert small.optimizer < full.optimizer < 8 * params + 4 * shape.quantizable
    eight = estimate_galore(shape, rank=2, batch=4, seq=64, base_dtype=torch.float32, eight_bit=True)
    assert eight.optimizer < small.optimizer


def test_chunked_loss_keeps_one_chunk_of_logits():
    shape = model_shape(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2))
    kw = dict(load_in_4bit=True, rank=8, batch=8, seq=512, compute_dtype=torch.bfloat16)
    whole = estimate_training(shape, **kw)
    chunked = estimate_training(shape, loss_chunk_tokens=512, **kw)
    assert whole.activations - chunked.activations == pytest.approx((8 * 512 - 512) * 49152 * 12, rel=0.01)
    one_chunk = estimate_training(shape, loss_chunk_tokens=10**6, **kw)  # all tokens in one chunk: no saving
    assert one_chunk.activations == pytest.approx(whole.activations, rel=1e-3)


def test_plan_follows_the_jobs_loss_chunks_and_8_bit_optimizer(tiny):
    from tests.conftest import tiny_job
    from trainers.memory_estimate import estimate_job_training

    shape = model_shape(tiny[1])
    no_ckpt = "training.gradient_checkpointing=false"  # the loss term adds up (tiny vocabulary: a block costs more)
    plain = estimate_job_training(shape, tiny_job(no_ckpt), rank=8, role="trainer")
    chunked = estimate_job_training(shape, tiny_job(no_ckpt, "training.loss_chunk_tokens=1"), rank=8, role="trainer")
    eight = estimate_job_training(shape, tiny_job("training.optimizer=paged_adamw_8bit"), rank=8, role="trainer")
    assert chunked.activations < plain.activations
    assert eight.optimizer == plain.optimizer // 4
