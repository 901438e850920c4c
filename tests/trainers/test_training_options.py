"""Training options a config can switch on, each checked against what it promises: data.packing, the
non-default lr schedulers, and checkpoints a crash left half-written (`step-N.tmp`)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Interrupt, stop_at, tiny_job
from trainers import checkpoint as ckpt
from trainers.batching import encode_all
from trainers.finetune import FinetuneRecipe, train

CHEAP = ("quantization.load_in_4bit=false", "training.gradient_checkpointing=false", "training.batch_size=4",
         "data.max_seq_len=32", "training.checkpoint_every=1000")


def test_packing_concatenates_whole_examples_into_blocks_of_at_most_max_seq_len(tmp_path):
    recipe = FinetuneRecipe(tiny_job(*CHEAP, "data.packing=true", "data.max_seq_len=48", "training.max_steps=2"),
                            tmp_path, progress=False)
    recipe.setup()
    from trainers.datasets.splits import load_splits

    plain = encode_all(load_splits(recipe.cfg.data)["train"], recipe.tokenizer, 48)
    blocks = recipe.train_examples
    assert len(blocks) < len(plain) / 2, "examples of ~10-20 tokens: several to a 48-token block"
    assert all(len(b["input_ids"]) == len(b["labels"]) <= 48 for b in blocks)
    # nothing dropped, reordered or cut: the blocks are the examples end to end, cut only between examples
    assert [t for b in blocks for t in b["input_ids"]] == [t for ex in plain for t in ex["input_ids"]]
    assert [t for b in blocks for t in b["labels"]] == [t for ex in plain for t in ex["labels"]]
    starts, offset = {0}, 0
    for ex in plain:
        offset += len(ex["input_ids"])
        starts.add(offset)
    offset = 0
    for block in blocks:
        assert offset in starts, "a block began inside an example"
        offset += len(block["input_ids"])
    recipe.train()  # the packed batches train like any other
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)


def _expected_lr(kind: str, lr: float, step: int, warmup: int, total: int) -> float:
    """The lr of 0-based step `step`: linear warmup, then constant, linear decay to 0, or half a cosine to 0."""
    if step < warmup:
        return lr * step / warmup
    progress = (step - warmup) / (total - warmup)
    return {"constant": lr, "linear": lr * (1 - progress), "cosine": lr * 0.5 * (1 + math.cos(math.pi * progress))}[kind]


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_each_lr_scheduler_follows_its_formula_after_warmup(tmp_path, kind):
    steps, lr = 10, 4e-3
    train(tiny_job(*CHEAP, f"training.lr_scheduler={kind}", f"training.max_steps={steps}", f"training.lr={lr}",
                   "training.warmup_ratio=0.2"), tmp_path, progress=False)
    recorded = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recorded == pytest.approx([_expected_lr(kind, lr, k, 2, steps) for k in range(steps)], rel=1e-9, abs=1e-12)


def test_a_half_written_checkpoint_is_never_loaded_and_is_cleaned_up(tmp_path):
    """A crash between writing step-N.tmp and renaming it leaves a folder that may look whole; resuming must
    use the last renamed checkpoint, reach the uninterrupted run's weights, and drop the leftover."""
    overrides = (*CHEAP, "training.max_steps=12", "training.checkpoint_every=4", "training.keep_checkpoints=1")
    straight = train(tiny_job(*overrides), tmp_path / "straight", progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train(tiny_job(*overrides), cut, on_step=stop_at(6), progress=False)
    folder = cut / "checkpoints"
    [good] = ckpt.list_checkpoints(folder)
    torn = folder / "step-00000006.tmp"  # a complete, verifying copy: only its name says it was never finished
    shutil.copytree(good, torn)
    state = json.loads((torn / "state.json").read_text())
    (torn / "state.json").write_text(json.dumps({**state, "step": 6}))
    ckpt.write_manifest(torn)
    assert ckpt.verify_checkpoint(torn) is None

    recipe = FinetuneRecipe(tiny_job(*overrides), cut, progress=False)
    recipe.setup()
    assert recipe.start_step == 4
    recipe.train()
    assert not torn.exists(), "the leftover is removed once a newer checkpoint is written"
    a, b = load_file(straight.adapter_dir / "adapter_model.safetensors"), load_file(cut / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
