"""P4: peak training memory of NF4 QDyLoRA against bf16 LoRA at rank 64, and `dyrank plan`'s estimate of both.

    python3 bench/p4_memory.py --out bench/results/p4_memory.json     # on a CUDA machine (needs bitsandbytes)
    python3 bench/p4_memory.py --tiny --out /tmp/p4.json               # CPU smoke test (no peaks measured)

Shapes: SmolLM2-135M (its tied 28M-parameter embedding stays unquantized: report the base-weight ratio and the
whole peak) and a 7B Llama, whose run is capped at 32 GiB with torch.cuda.set_per_process_memory_fraction
(the 32 GB V100 the paper used). Both runs use the recipe's paged AdamW 32-bit and gradient checkpointing.
Peak = torch's max allocated during three training steps (after the load) + the optimizer states bitsandbytes
pages into CUDA unified memory (outside torch's allocator; resident on the GPU while it has room).
"""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

import torch

from _common import LLAMA_7B, SMOLLM2_135M, TINY, header, lm_step, parser, save_random_base, write_result

from trainers.adapters import attach_lora  # noqa: E402
from trainers.memory import paged_optimizer_bytes  # noqa: E402
from trainers.memory_estimate import estimate_training, model_shape  # noqa: E402
from trainers.models import QuantSettings, default_device, load_base_model  # noqa: E402
from trainers.optim import build_optimizer  # noqa: E402
from trainers.methods.qdylora import RankSampler, set_active_rank  # noqa: E402


def measure(base: Path, nf4: bool, batch: int, seq: int, vocab: int, steps: int = 3) -> dict:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    quant = QuantSettings() if nf4 else None
    model = load_base_model(base, quant, dtype=None if nf4 else torch.bfloat16)
    weights = torch.cuda.memory_allocated() if cuda else None
    model = attach_lora(model, rank=64, alpha=16, dropout=0.1, target_modules="all-linear", dynamic=nf4,
                        gradient_checkpointing=True).train()
    optimizer = build_optimizer("paged_adamw_32bit", model.parameters(), 1e-4, 0.0)
    sampler = RankSampler(1, 64, seed=1)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        if nf4:
            set_active_rank(model, 64 if _ == 0 else sampler.sample())  # the first step at r_max: the worst case
        ids = torch.randint(1, vocab, (batch, seq), generator=g).to(default_device())
        lm_step(model, optimizer, ids, clip=None)  # no clipping: the recorded peaks were measured without it
    row = {"weights_bytes": weights,
           "torch_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
           "paged_optimizer_bytes": paged_optimizer_bytes(optimizer)}
    if cuda:
        row["peak_bytes"] = row["torch_peak_bytes"] + row["paged_optimizer_bytes"]
    del model, optimizer
    gc.collect()
    return row


def estimate(shape: dict, nf4: bool, batch: int, seq: int) -> dict:
    from transformers import LlamaConfig

    return estimate_training(model_shape(LlamaConfig(**shape)), rank=64, batch=batch, seq=seq, load_in_4bit=nf4,
                             compute_dtype=torch.bfloat16, base_dtype=torch.bfloat16).as_dict()


def main() -> None:
    args = parser(tiny="tiny shape: a CPU smoke test of this script (no peaks measured)").parse_args()
    runs = ([("tiny", TINY, 4, 64)] if args.tiny else
            [("SmolLM2-135M", SMOLLM2_135M, 8, 512), ("Llama-7B shape", LLAMA_7B, 4, 512)])
    result = header("bench/p4_memory.py", ", ".join(name for name, *_ in runs))
    result["rows"] = []
    for name, shape, batch, seq in runs:
        if torch.cuda.is_available() and "7B" in name:
            torch.cuda.set_per_process_memory_fraction(32 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
        with tempfile.TemporaryDirectory() as tmp:
            base = save_random_base(shape, Path(tmp) / "base")
            row = {"shape": name, "batch": batch, "seq": seq, "capped_gib": 32 if "7B" in name else None}
            for label, nf4 in (("qdylora_nf4", True), ("lora_bf16", False)):
                row[label] = {"measured": measure(base, nf4, batch, seq, shape["vocab_size"]),
                              "estimate": estimate(shape, nf4, batch, seq)}
                m, e = row[label]["measured"], row[label]["estimate"]
                if m.get("peak_bytes"):
                    row[label]["estimate_over_measured"] = e["total"] / m["peak_bytes"]
                print(name, label, json.dumps(row[label]), flush=True)
            q, b = row["qdylora_nf4"]["measured"], row["lora_bf16"]["measured"]
            if q.get("peak_bytes"):
                row["weights_ratio"] = q["weights_bytes"] / b["weights_bytes"]
                row["peak_ratio"] = q["peak_bytes"] / b["peak_bytes"]
            result["rows"].append(row)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
