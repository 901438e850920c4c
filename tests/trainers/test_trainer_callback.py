"""QDyLoRA under transformers' Trainer and TRL's SFTTrainer: one uniform rank per optimizer step, the same
for every micro-batch of that step, logged; the saved adapter exports with `dyrank export` and loads in plain
PEFT with the trained model's logits at that rank."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from tests.conftest import REPO, tiny_job
from tests.trainers.test_rank_sampler import assert_uniform
from trainers.adapters import attach_lora
from trainers.batching import collate, encode_all
from trainers.datasets.splits import load_splits
from trainers.methods.qdylora import DynamicRankCallback, RankTruncatedLinear, save_dynamic_adapter, set_active_rank
from trainers.models import load_base_model, load_tokenizer, resolve_base

R_MAX, STEPS, ACCUM = 4, 40, 2


def _peft_model(base_path):
    torch.manual_seed(0)
    base = load_base_model(base_path, quant=None, device=torch.device("cpu"))  # fp32: logits compared to 1e-5
    return attach_lora(base, rank=R_MAX, alpha=16, dropout=0.0, target_modules="all-linear", dynamic=True,
                       gradient_checkpointing=False)


def _train_data(tokenizer):
    job = tiny_job()
    return encode_all(load_splits(job.data)["train"], tokenizer, 24)


def _record_ranks(model) -> list[int]:
    """The active rank every forward of one LoRA factor sees: read inside the model, not from the callback."""
    seen = []
    factor = next(m for m in model.modules() if isinstance(m, RankTruncatedLinear))
    factor.register_forward_hook(lambda mod, inp, out: seen.append(mod.active_rank))
    return seen


def _args(out, **extra):
    return dict(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=2, gradient_accumulation_steps=ACCUM,
                learning_rate=1e-2, logging_steps=10, save_strategy="steps", save_steps=STEPS, report_to="none",
                use_cpu=True, seed=0, disable_tqdm=True,
                bf16=False, **extra)  # SFTConfig defaults to bf16 autocast, which would stay on the forward compared below


def _check_ranks_and_export(model, callback, seen, trainer, tmp_path):
    assert len(callback.ranks) == STEPS
    per_step = len(seen) // STEPS  # forwards per optimizer step: ACCUM micro-batches, twice each where activations are recomputed in backward (SFTConfig checkpoints by default)
    assert per_step >= ACCUM and len(seen) == per_step * STEPS
    assert seen == [r for r in callback.ranks for _ in range(per_step)], "rank changed inside an optimizer step"
    assert_uniform(callback.ranks, 1, R_MAX)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert logged and all(row["active_rank"] == callback.ranks[row["step"] - 1] for row in logged)

    adapter = save_dynamic_adapter(model, tmp_path / "adapter", r_min=1)
    assert json.loads((adapter / "dyrank_adapter.json").read_text())["r_max"] == R_MAX
    checkpoint = tmp_path / "out" / f"checkpoint-{STEPS}"
    assert (checkpoint / "dyrank_adapter.json").is_file(), "Trainer checkpoints export too"

    rank = 2
    out = tmp_path / f"r{rank}"
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "export", str(adapter), "--rank", str(rank),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    set_active_rank(model, rank)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    config = json.loads((out / "adapter_config.json").read_text())
    base = load_base_model(config["base_model_name_or_path"], quant=None, device=torch.device("cpu"))
    plain = PeftModel.from_pretrained(base, out).eval()  # plain PEFT, nothing of ours
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_trainer_samples_one_rank_per_optimizer_step_and_exports(tmp_path):
    base_path = resolve_base(tiny_job().model.source)
    tokenizer = load_tokenizer(base_path)
    model = _peft_model(base_path)
    seen = _record_ranks(model)
    callback = DynamicRankCallback(r_min=1, seed=3)
    trainer = Trainer(model=model, args=TrainingArguments(**_args(tmp_path / "out")), train_dataset=_train_data(tokenizer),
                      data_collator=lambda rows: collate(rows, tokenizer.pad_token_id), callbacks=[callback])
    trainer.train()
    _check_ranks_and_export(model, callback, seen, trainer, tmp_path)


def test_sft_trainer_samples_one_rank_per_optimizer_step_and_exports(tmp_path):
    """TRL (declared in the test extra: it installs beside our torch/transformers/peft pins)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base_path = resolve_base(tiny_job().model.source)
    tokenizer = load_tokenizer(base_path)
    model = _peft_model(base_path)
    seen = _record_ranks(model)
    callback = DynamicRankCallback(r_min=1, seed=3)
    records = load_splits(tiny_job().data)["train"]
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    config = SFTConfig(**_args(tmp_path / "out"), max_length=24, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    _check_ranks_and_export(model, callback, seen, trainer, tmp_path)


def test_resumed_trainer_continues_the_same_rank_sequence(tmp_path):
    base_path = resolve_base(tiny_job().model.source)
    tokenizer = load_tokenizer(base_path)
    data = _train_data(tokenizer)

    def run(out, resume=None):
        callback = DynamicRankCallback(r_min=1, seed=5)
        args = dict(_args(out), max_steps=8, save_steps=4, logging_steps=4)
        Trainer(model=_peft_model(base_path), args=TrainingArguments(**args), train_dataset=data,
                data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
                callbacks=[callback]).train(resume_from_checkpoint=resume)
        return callback.ranks

    straight = run(tmp_path / "straight")
    resumed = run(tmp_path / "cut", str(tmp_path / "straight" / "checkpoint-4"))
    assert len(straight) == 8 and resumed == straight[4:]


def test_callback_refuses_a_model_without_lora():
    with pytest.raises(ValueError, match="no PEFT adapter"):
        DynamicRankCallback().on_train_begin(None, None, None, model=torch.nn.Linear(2, 2))
