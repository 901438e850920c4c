"""A run interrupted at step k and resumed from its checkpoint saves bit-identical weights to a run that was never
interrupted, for every method with state of its own: frozen-mode QDyLoRA, LoRA, BitLoRA and AdaLoRA (whose
importance scores and rank pattern live outside the weights). qdylora (cumulative) and GaLore: test_finetune.py
and test_methods.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Interrupt, stop_at, tiny_job
from trainers.finetune import train

STEPS = ("training.max_steps=12", "training.checkpoint_every=4", "training.keep_checkpoints=1", "training.lr=5e-3",
         "evaluation.max_samples=16", "data.max_seq_len=32", "training.batch_size=4")
SIXTEEN_BIT = ("quantization.load_in_4bit=false", "training.gradient_checkpointing=false")
# AdaLoRA prunes on steps 3..8 (tinit 2) and fixes its final allocation at step 8 = total_step - tfinal
ADALORA = ("adapter.method=adalora", "adapter.rank=2", "adapter.adalora.init_r=4", "adapter.adalora.tinit=2",
           "adapter.adalora.tfinal=4", *SIXTEEN_BIT)
CASES = {
    "qdylora-frozen": (("adapter.update_mode=frozen", "adapter.r_max=4"), 10),
    "lora": (("adapter.method=lora", "adapter.rank=4", *SIXTEEN_BIT), 10),
    "bitlora-1.58": (("adapter.method=bitlora", "adapter.rank=4", "adapter.bitlora.bits='1.58'"), 10),
    "adalora-while-pruning": (ADALORA, 6),  # resumes from step 4: the importance averages must carry over
    "adalora-after-final-allocation": (ADALORA, 10),  # resumes from step 8: steps 9.. re-apply the saved pattern
}


def _saved(out):
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    return weights, config.get("rank_pattern")


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_and_resumed_run_saves_the_same_weights(tmp_path, case):
    overrides, cut_at = CASES[case]
    job = tiny_job(*STEPS, *overrides)
    train(job, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupt):
        train(job, tmp_path / "cut", on_step=stop_at(cut_at), progress=False)
    resumed = train(tiny_job(*STEPS, *overrides), tmp_path / "cut", progress=False)
    assert resumed.resumed_from == cut_at // 4 * 4

    (a, pattern_a), (b, pattern_b) = _saved(tmp_path / "straight"), _saved(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert pattern_a == pattern_b
    if job.adapter.method == "adalora":
        assert pattern_a and not all(all(mask) for mask in pattern_a.values()), "the final allocation pruned ranks"


def test_an_adalora_checkpoint_from_before_method_state_resumes_with_a_warning(tmp_path, caplog):
    """A checkpoint written by a dyrank that did not save method state still resumes (not exactly: it says so)."""
    from trainers import checkpoint as ckpt

    job = tiny_job(*STEPS, *ADALORA)
    with pytest.raises(Interrupt):
        train(job, tmp_path, on_step=stop_at(6), progress=False)
    [checkpoint] = ckpt.list_checkpoints(tmp_path / "checkpoints")
    for name in (ckpt.METHOD_TENSORS, ckpt.METHOD_SCALARS):
        (checkpoint / name).unlink()
    ckpt.write_manifest(checkpoint)
    with caplog.at_level("WARNING", logger="dyrank.adalora"):
        resumed = train(job, tmp_path, progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 12
    assert "predates AdaLoRA state" in caplog.text
