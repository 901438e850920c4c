"""An attempt to go past one forward per rank: score k ranks of one QDyLoRA adapter in one batched forward.

    python3 bench/multirank_eval.py --out bench/results/multirank_eval.json           # GPU: SmolLM2 shape, random
    python3 bench/multirank_eval.py --real --out bench/results/multirank_eval_cpu.json  # CPU: SmolLM2 + countries

How: the batch is repeated k times, block j for rank b_j. Every LoRA layer runs at r_max with PEFT's scaling set
to 1, and a hook multiplies lora_A's output (rows, tokens, r_max) by a per-row mask holding alpha/b_j on the first
b_j ranks and 0 after, which is exactly (alpha/b_j) * B[:, :b_j] A[:b_j] x for each block. The base matmuls do k
times the work in one call instead of k calls: it can only win where a forward is launch- or overhead-bound.
Compared with k sequential `set_active_rank` + `evaluate` passes; the losses must agree.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import (SMOLLM2_135M, Pad, header, parser, random_examples, randomize_lora_b, save_random_base, spread,
                     timed, write_result)

from evaluators.metrics import evaluate  # noqa: E402
from trainers.adapters import attach_lora  # noqa: E402
from trainers.batching import IGNORE_INDEX, eval_batches  # noqa: E402
from trainers.models import QuantSettings, dequantize_once, load_base_model  # noqa: E402
from trainers.adapters import lora_layers  # noqa: E402
from trainers.methods.qdylora import set_active_rank  # noqa: E402


@torch.inference_mode()
def multirank_losses(model, ranks: list[int], examples: list[dict], batch_size: int, alpha: float) -> dict[int, float]:
    layers = list(lora_layers(model))
    r_max = layers[0].lora_A["default"].max_rank
    set_active_rank(model, r_max)
    for layer in layers:
        layer.scaling["default"] = 1.0
    state = {}
    hooks = [layer.lora_A["default"].register_forward_hook(lambda m, i, out: out * state["mask"]) for layer in layers]
    device = next(model.parameters()).device
    sums, counts = dict.fromkeys(ranks, 0.0), dict.fromkeys(ranks, 0)
    try:
        for batch in eval_batches(examples, batch_size, 0):
            rows = batch["input_ids"].shape[0]
            mask = torch.zeros(len(ranks) * rows, 1, r_max, device=device)
            for j, b in enumerate(ranks):
                mask[j * rows:(j + 1) * rows, :, :b] = alpha / b
            state["mask"] = mask
            k = len(ranks)
            logits = model(input_ids=batch["input_ids"].to(device).repeat(k, 1),
                           attention_mask=batch["attention_mask"].to(device).repeat(k, 1)).logits
            labels = batch["labels"][:, 1:].to(device).repeat(k, 1)
            losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                     reduction="none")
            for j, b in enumerate(ranks):
                block = slice(j * rows, (j + 1) * rows)
                sums[b] += float(losses[block].sum())
                counts[b] += int((labels[block] != IGNORE_INDEX).sum())
    finally:
        for hook in hooks:
            hook.remove()
        set_active_rank(model, r_max)  # restores PEFT's scaling alpha/r_max
    return {b: sums[b] / counts[b] for b in ranks}


def main() -> None:
    arguments = parser()
    arguments.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct and countries (CPU)")
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    ranks = [1, 2, 4, 8, 16, 32, 48, 64]
    tmp = tempfile.TemporaryDirectory()
    if args.real:
        from trainers.batching import encode_all
        from trainers.datasets.splits import read_jsonl
        from trainers.datasets import split_files
        from trainers.models import load_tokenizer, resolve_base

        base = resolve_base("smollm2-135m-instruct")
        records = read_jsonl(split_files("countries")["validation"])[:64]
        examples, batch_size = encode_all(records, load_tokenizer(base), max_seq_len=96), 16
    else:
        base = save_random_base(SMOLLM2_135M, Path(tmp.name) / "base")
        examples, batch_size = random_examples(64, 256), 8
    model = dequantize_once(load_base_model(base, QuantSettings()))
    torch.manual_seed(0)
    model = attach_lora(model, rank=64, alpha=16, dropout=0.0, target_modules="all-linear", dynamic=True,
                        gradient_checkpointing=False).eval()
    randomize_lora_b(model, 0.02)

    def sequential():
        out = {}
        for b in ranks:
            set_active_rank(model, b)
            out[b] = evaluate(model, examples, Pad(), batch_size)["eval_loss"]
        return out

    def batched(group: int):
        out = {}
        for i in range(0, len(ranks), group):
            out.update(multirank_losses(model, ranks[i:i + group], examples, batch_size, alpha=16))
        return out

    variants = {"sequential": sequential, "batched_2": lambda: batched(2), "batched_8": lambda: batched(8)}
    times, losses = {k: [] for k in variants}, {}
    for rep in range(args.repeats + 1):  # round 0 warms up
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            losses[name], seconds = timed(variants[name])
            if rep:
                times[name].append(seconds)
    result = header("bench/multirank_eval.py", "SmolLM2-135M-Instruct, countries" if args.real else "SmolLM2-135M random")
    seq = statistics.median(times["sequential"])
    result.update(ranks=ranks, examples=len(examples), batch_size=batch_size,
                  seconds={k: spread(v) for k, v in times.items()},
                  ratio_over_sequential={k: statistics.median(v) / seq for k, v in times.items()},
                  max_relative_loss_difference={k: max(abs(losses[k][b] - losses["sequential"][b]) / losses["sequential"][b]
                                                       for b in ranks) for k in variants},
                  losses=losses)
    print(json.dumps({k: result[k] for k in ("ratio_over_sequential", "max_relative_loss_difference")}), flush=True)
    write_result(result, args.out)
    tmp.cleanup()


if __name__ == "__main__":
    main()
