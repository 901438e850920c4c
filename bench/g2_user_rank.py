"""One rank of the grid search a user scripts without dyrank: transformers `Trainer` + PEFT QLoRA at rank r on
the NF4 base, then the validation loss. bench/g2_time_to_rank.py runs it once per rank, each in a fresh process.

    python3 bench/g2_user_rank.py --config examples/smollm2-countries.yaml --rank 8

The same base, data, steps, batch, lr, schedule, warm-up, optimizer, clipping, alpha and dropout as the dyrank
config; the examples are encoded by dyrank's encode_all (so both sides score the same tokens); the model, the
training loop and the loss are plain transformers + PEFT + bitsandbytes, as their docs show them. Prints one JSON
line: {rank, eval_loss, seconds}.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

started = time.perf_counter()  # the fresh process's imports count: the user pays them once per rank

from _common import REPO, peer_optimizer  # noqa: E402,F401  (REPO: puts the project on sys.path)
from _eval_bench import PIPELINE_SECTIONS, hf_loss  # noqa: E402
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments  # noqa: E402

from trainers.batching import collate, encode_all  # noqa: E402
from trainers.config import load_job_config  # noqa: E402
from trainers.datasets.splits import load_splits  # noqa: E402
from trainers.models import load_tokenizer, resolve_base, resolve_compute_dtype  # noqa: E402

# dyrank's lr_scheduler (after its warm-up) -> Trainer's name for the same schedule
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rank", type=int, required=True)
    args = parser.parse_args()
    cfg = load_job_config(args.config, args.set, ignore_sections=PIPELINE_SECTIONS)
    optimizer = peer_optimizer(cfg.training.optimizer)  # before any load: one line if Trainer has none
    base = resolve_base(cfg.model.source)
    tokenizer = load_tokenizer(base)
    splits = load_splits(cfg.data)
    train = encode_all(splits["train"], tokenizer, cfg.data.max_seq_len)
    validation = encode_all(splits["validation"][:cfg.evaluation.max_samples], tokenizer, cfg.data.max_seq_len)
    dtype = resolve_compute_dtype(cfg.quantization.compute_dtype)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, dtype=dtype)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=cfg.adapter.alpha, lora_dropout=cfg.adapter.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    t = cfg.training
    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
            gradient_accumulation_steps=t.grad_accum_steps, learning_rate=t.lr,
            # the recipe's schedule, warm-up and optimizer (trainers/finetune.py), as G1's peer
            lr_scheduler_type=SCHEDULES[t.lr_scheduler], warmup_steps=math.ceil(t.warmup_ratio * t.max_steps),
            max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, optim=optimizer,
            save_strategy="no", report_to="none", disable_tqdm=True, seed=t.seed,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False)
        Trainer(model=model, args=arguments, train_dataset=train,
                data_collator=lambda rows: collate(rows, tokenizer.pad_token_id)).train()
    model.eval()
    loss = hf_loss(model, validation, tokenizer.pad_token_id, cfg.evaluation.batch_size)
    print(json.dumps({"rank": args.rank, "eval_loss": loss, "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
