"""`dyrank export` writes a standard PEFT adapter that reproduces the trained model at that rank."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tests.conftest import tiny_job
from trainers.finetune import train
from trainers.hub import adapter_base_source
from trainers.models import load_base_model, resolve_base
from trainers.methods.qdylora import attach_dynamic_rank, export_rank, set_active_rank

R_MAX = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A QDyLoRA run on a 16-bit (fp32) tiny base, so equivalence can be checked to 1e-5."""
    cfg = tiny_job("quantization.load_in_4bit=false", "training.max_steps=15", "training.gradient_checkpointing=false",
                      "training.lr=0.01")
    out = tmp_path_factory.mktemp("train")
    result = train(cfg, out, progress=False)
    return result


def _trained_model_at(adapter_dir, rank):
    base = load_base_model(resolve_base(adapter_base_source(adapter_dir)), quant=None, device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, adapter_dir)
    attach_dynamic_rank(model)
    set_active_rank(model, rank)
    return model.eval()


@pytest.mark.parametrize("rank", [1, 4, R_MAX])
def test_exported_adapter_matches_trained_model_at_that_rank(trained, tmp_path, rank):
    out = export_rank(trained.adapter_dir, rank, tmp_path / f"r{rank}")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == rank and config["lora_alpha"] == 16.0
    weights = load_file(out / "adapter_model.safetensors")
    assert all(t.shape[0] == rank for k, t in weights.items() if "lora_A" in k)
    assert all(t.shape[1] == rank for k, t in weights.items() if "lora_B" in k)

    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = _trained_model_at(trained.adapter_dir, rank)(input_ids=ids).logits
    base = load_base_model(resolve_base(adapter_base_source(out)), quant=None, device=torch.device("cpu"))
    assert config["base_model_name_or_path"] == "tiny-llama"  # the preset's id, not its cache folder
    plain = PeftModel.from_pretrained(base, out).eval()  # plain PEFT, nothing of ours
    torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_trained_adapter_is_not_trivial(trained, tmp_path):
    """B starts at zero: if training did not move it, every rank would trivially agree."""
    weights = load_file(trained.adapter_dir / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for k, t in weights.items() if "lora_B" in k)


@pytest.mark.parametrize("rank", [0, R_MAX + 1])
def test_export_rejects_ranks_the_adapter_lacks(trained, tmp_path, rank):
    with pytest.raises(ValueError, match="not exportable"):
        export_rank(trained.adapter_dir, rank, tmp_path / "bad")


def test_fixed_rank_adapter_exports_only_its_rank(tmp_path):
    cfg = tiny_job("adapter.method=qlora", "adapter.rank=2", "quantization.load_in_4bit=false",
                      "training.max_steps=2", "evaluation.ranks=[2]")
    result = train(cfg, tmp_path / "run", progress=False)
    assert json.loads((export_rank(result.adapter_dir, 2, tmp_path / "r2") / "adapter_config.json").read_text())["r"] == 2
    with pytest.raises(ValueError, match="not exportable"):
        export_rank(result.adapter_dir, 1, tmp_path / "r1")
