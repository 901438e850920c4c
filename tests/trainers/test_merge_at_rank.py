"""Merging a rank-switchable adapter: PEFT's merge is refused (it would scale the full B @ A by alpha/b), and
`merge_at_rank` gives exactly the weights of the exported rank-b adapter merged by plain PEFT."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from tests.conftest import tiny_job
from trainers.finetune import train
from trainers.hub import adapter_base_source
from trainers.methods.qdylora import attach_dynamic_rank, export_rank, merge_at_rank, set_active_rank
from trainers.models import load_base_model, resolve_base

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    cfg = tiny_job("quantization.load_in_4bit=false", "training.max_steps=8", "training.lr=0.01",
                   "training.gradient_checkpointing=false")
    return train(cfg, tmp_path_factory.mktemp("train"), progress=False).adapter_dir


def _bf16_base(adapter_dir):
    return load_base_model(resolve_base(adapter_base_source(adapter_dir)), dtype=torch.bfloat16, device=CPU)


def _dynamic(adapter_dir, rank):
    model = PeftModel.from_pretrained(_bf16_base(adapter_dir), adapter_dir)
    attach_dynamic_rank(model)
    set_active_rank(model, rank)
    return model


def test_plain_peft_merge_of_a_dynamic_model_is_refused(adapter):
    model = _dynamic(adapter, 2)
    with pytest.raises(RuntimeError, match="merge_at_rank"):
        model.merge_and_unload()


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_merge_at_rank_equals_the_exported_adapter_merged_by_plain_peft(adapter, tmp_path, rank):
    merged = merge_at_rank(_dynamic(adapter, 8), rank).state_dict()  # the active rank does not matter
    exported = export_rank(adapter, rank, tmp_path / f"r{rank}")
    expected = PeftModel.from_pretrained(_bf16_base(exported), exported).merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    base = _bf16_base(adapter).state_dict()
    changed = [k for k in expected if not torch.equal(expected[k], base[k])]
    assert changed, "the update must move some weight, or the comparison proves nothing"
    for key in expected:
        assert merged[key].dtype == torch.bfloat16
        torch.testing.assert_close(merged[key], expected[key], atol=0, rtol=0, msg=key)
    # (tests/trainers/test_export.py shows the exported adapter reproduces the dynamic model at that rank)
