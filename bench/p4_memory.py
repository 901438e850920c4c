"""P4: peak training memory of NF4 QDyLoRA against bf16 LoRA at rank 64, the memory levers on the NF4 side, and
`dyrank plan`'s estimate of each.

    python3 bench/p4_memory.py --out bench/results/p4_memory.json                  # CUDA: SmolLM2 and 7B shapes
    python3 bench/p4_memory.py --shapes smollm2 --out bench/results/p4_memory-cpu.json   # CPU, by peak RSS
    python3 bench/p4_memory.py --smoke --out /tmp/p4.json                          # CPU smoke test (seconds)

Arms: `qdylora_nf4` (NF4 + double quant base, embedding and lm_head in the compute dtype, the model's own loss,
paged AdamW 32-bit), the same with one lever each (`+chunked_loss`: trainers/loss.py over --loss-chunk-tokens
tokens at a time; `+adamw_8bit`: paged AdamW 8-bit), both levers together, and `lora_bf16` (a bf16 base, the
model's own loss, paged AdamW 32-bit). LoRA r 64 on every linear, gradient checkpointing, three steps, the first
at r_max. Random weights built from each shape's config.

CUDA: peak = torch's max allocated during the steps + the optimizer states bitsandbytes pages into unified memory
(outside torch's allocator); the 7B shape is capped at 32 GiB (the paper's V100). CPU: each arm runs alone in a
fresh process and its peak is the peak RSS minus the RSS before the base loads (trainers/memory.py), which also
counts the allocator's and libraries' working memory: on a tiny model that is all there is.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import LLAMA_7B, SMOLLM2_135M, TINY, header, lm_step, parse, parser, save_random_base, write_result

from trainers.adapters import attach_lora  # noqa: E402
from trainers.loss import causal_lm_loss  # noqa: E402
from trainers.memory import PeakMemory, paged_optimizer_bytes  # noqa: E402
from trainers.memory_estimate import estimate_training, model_shape  # noqa: E402
from trainers.models import QuantSettings, default_device, load_base_model  # noqa: E402
from trainers.optim import build_optimizer  # noqa: E402
from trainers.methods.qdylora import RankSampler, set_active_rank  # noqa: E402

SHAPES = {"tiny": TINY, "smollm2": SMOLLM2_135M, "llama7b": LLAMA_7B}
# (batch, seq) per shape: on a GPU the recorded rows' sizes, on a CPU small enough for minutes
SIZES = {"cuda": {"smollm2": (8, 512), "llama7b": (4, 512), "tiny": (4, 64)},
         "cpu": {"smollm2": (4, 256), "llama7b": (1, 128), "tiny": (2, 32)}}
ARMS = {  # name -> (4-bit base, optimizer, chunked loss)
    "qdylora_nf4": (True, "paged_adamw_32bit", False),
    "qdylora_nf4+chunked_loss": (True, "paged_adamw_32bit", True),
    "qdylora_nf4+adamw_8bit": (True, "paged_adamw_8bit", False),
    "qdylora_nf4+both": (True, "paged_adamw_8bit", True),
    "lora_bf16": (False, "paged_adamw_32bit", False),
}


def measure(base: Path, arm: str, batch: int, seq: int, vocab: int, chunk: int, steps: int = 3) -> dict:
    """Peak memory of `steps` training steps of `arm` in this process (its peak alone: see the docstring)."""
    nf4, optimizer_name, chunked = ARMS[arm]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    memory = PeakMemory(default_device()).start()  # on the CPU: the RSS before the base loads
    model = load_base_model(base, QuantSettings() if nf4 else None, dtype=None if nf4 else torch.bfloat16)
    weights = torch.cuda.memory_allocated() if cuda else None
    model = attach_lora(model, rank=64, alpha=16, dropout=0.1, target_modules="all-linear", dynamic=nf4,
                        gradient_checkpointing=True).train()
    optimizer = build_optimizer(optimizer_name, model.parameters(), 1e-4, 0.0)
    sampler = RankSampler(1, 64, seed=1)
    load_peak = None if cuda else memory.peak_bytes()  # the load's transient (bf16 read, then quantized)
    memory.restart_peak()  # the steps' peak from here, counted from before the load, as on CUDA
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        if nf4:
            set_active_rank(model, 64 if step == 0 else sampler.sample())  # the first step at r_max: the worst case
        ids = torch.randint(1, vocab, (batch, seq), generator=g).to(default_device())
        if chunked:
            causal_lm_loss(model, {"input_ids": ids, "labels": ids}, chunk).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            lm_step(model, optimizer, ids, clip=None)  # no clipping: the recorded peaks were measured without it
    row = {"weights_bytes": weights, "paged_optimizer_bytes": paged_optimizer_bytes(optimizer), "load_peak_bytes": load_peak}
    if cuda:
        row["torch_peak_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_bytes"] = row["torch_peak_bytes"] + row["paged_optimizer_bytes"]
        row["peak_kind"] = "cuda_max_allocated_plus_paged"
    else:
        row["peak_bytes"], row["peak_kind"] = memory.peak_bytes(), memory.kind
    del model, optimizer
    gc.collect()
    return row


def measure_alone(base: Path, arm: str, batch: int, seq: int, vocab: int, chunk: int) -> dict:
    """`measure` in a fresh process, so a CPU peak RSS is this arm's and no earlier arm's."""
    cmd = [sys.executable, __file__, "--alone", arm, "--base", str(base), "--batch", str(batch), "--seq", str(seq),
           "--vocab", str(vocab), "--loss-chunk-tokens", str(chunk), "--out", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{arm} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimate(shape: dict, arm: str, batch: int, seq: int, chunk: int) -> dict:
    from transformers import LlamaConfig

    nf4, optimizer_name, chunked = ARMS[arm]
    return estimate_training(model_shape(LlamaConfig(**shape)), rank=64, batch=batch, seq=seq, load_in_4bit=nf4,
                             compute_dtype=torch.bfloat16, base_dtype=torch.bfloat16, optimizer=optimizer_name,
                             loss_chunk_tokens=chunk if chunked else 0).as_dict()


def main() -> None:
    arguments = parser(smoke="tiny shape on the CPU: a smoke test of this script (seconds; its peaks mean nothing)")
    arguments.add_argument("--shapes", help="comma-separated, of " + ", ".join(SHAPES) +
                           " (default: smollm2,llama7b on a GPU, smollm2 on a CPU)")
    arguments.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS) + " (all)")
    arguments.add_argument("--loss-chunk-tokens", type=int, default=512)
    for internal in ("--alone", "--base", "--batch", "--seq", "--vocab"):  # one arm in a subprocess (CPU)
        arguments.add_argument(internal, help=argparse.SUPPRESS)
    args = parse(arguments)
    if args.alone:
        print(json.dumps(measure(Path(args.base), args.alone, int(args.batch), int(args.seq), int(args.vocab),
                                 args.loss_chunk_tokens)))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = ["tiny"] if args.smoke else (args.shapes or ("smollm2,llama7b" if device == "cuda" else "smollm2")).split(",")
    arms = ["qdylora_nf4+both"] if args.smoke else args.arms.split(",")  # smoke: every lever, one process
    unknown = [n for n in names if n not in SHAPES] + [a for a in arms if a not in ARMS]
    if unknown:
        arguments.error(f"unknown shape or arm: {', '.join(unknown)}")
    result = header("bench/p4_memory.py", ", ".join(names))
    result.update(loss_chunk_tokens=args.loss_chunk_tokens, rows=[])
    for name in names:
        shape, (batch, seq) = SHAPES[name], SIZES[device][name]
        if device == "cuda" and name == "llama7b":
            torch.cuda.set_per_process_memory_fraction(32 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
        with tempfile.TemporaryDirectory() as tmp:
            base = save_random_base(shape, Path(tmp) / "base")
            row = {"shape": name, "batch": batch, "seq": seq, "capped_gib": 32 if device == "cuda" and name == "llama7b" else None}
            for arm in arms:
                run = measure if device == "cuda" else measure_alone
                measured = run(base, arm, batch, seq, shape["vocab_size"], args.loss_chunk_tokens)
                planned = estimate(shape, arm, batch, seq, args.loss_chunk_tokens)
                row[arm] = {"measured": measured, "estimate": planned,
                            "estimate_over_measured": planned["total"] / measured["peak_bytes"] if measured["peak_bytes"] else None}
                print(name, arm, json.dumps(row[arm]), flush=True)
            if "qdylora_nf4" in row and "lora_bf16" in row:
                q, b = row["qdylora_nf4"]["measured"], row["lora_bf16"]["measured"]
                if q["weights_bytes"]:
                    row["weights_ratio"] = q["weights_bytes"] / b["weights_bytes"]
                for arm in arms:
                    if arm.startswith("qdylora") and b["peak_bytes"]:
                        row.setdefault("peak_ratio", {})[arm] = row[arm]["measured"]["peak_bytes"] / b["peak_bytes"]
            result["rows"].append(row)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
