"""P1 and P3 on a GPU; they need only trainers/ and evaluators/ (no Ray, MLflow or pydantic on the GPU box).

    python3 bench/gpu.py --out bench/results/gpu.json          # on a CUDA machine
    python3 bench/gpu.py --tiny --out /tmp/gpu-smoke.json      # smoke test on the CPU

P1  step-time ratio: QDyLoRA step (r_max 64, rank sampled per step) / QLoRA step at r 64, same NF4 base,
    batch and sequence length; >= 30 interleaved steps each, median and spread.
P3  sweep ratio: the evaluator's sweep (one NF4 load, set_active_rank per rank) / a naive sweep that exports
    each rank and loads it with plain PEFT on a fresh NF4 base, over 8 ranks; interleaved repeats.
Models are SmolLM2-135M's shape with random weights (built from a config, nothing downloaded).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from _common import (Pad, free_cuda_cache, header, lm_step, parser, random_examples, randomize_lora_b, save_random_base,
                     spread, timed, tiny_or_smollm2, write_result)

from evaluators.metrics import evaluate  # noqa: E402
from evaluators.sweep import RankSweep, load_adapter  # noqa: E402
from trainers.adapters import attach_lora  # noqa: E402
from trainers.models import QuantSettings, default_device, load_base_model  # noqa: E402
from trainers.optim import build_optimizer  # noqa: E402
from trainers.methods.base import write_adapter_meta  # noqa: E402
from trainers.export import export_adapter  # noqa: E402
from trainers.methods.qdylora import RankSampler, set_active_rank  # noqa: E402


def p1_step_ratio(base: Path, steps: int, batch: int, seq: int, r: int = 64) -> dict:
    """QDyLoRA (rank sampled per step) against QLoRA at r; a third arm, QDyLoRA's model held at r_max, tells
    the cost of the truncated layers themselves apart from the cost of a new rank (new shapes) every step."""
    device = default_device()
    arms = {"qdylora": True, "qlora": False, "qdylora_at_rmax": True}
    models, optimizers = {}, {}
    for name, dynamic in arms.items():
        torch.manual_seed(0)
        model = attach_lora(load_base_model(base, QuantSettings()), rank=r, alpha=16, dropout=0.1,
                            target_modules="all-linear", dynamic=dynamic, gradient_checkpointing=True)
        models[name], optimizers[name] = model.train(), build_optimizer("paged_adamw_32bit", model.parameters(), 2e-4, 0.0)
    sampler = RankSampler(1, r, seed=1)
    ids = torch.randint(0, 384, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    names = list(arms)
    times = {name: [] for name in names}

    def train_step(name: str, model, optimizer) -> None:
        if name == "qdylora":
            set_active_rank(model, sampler.sample())
        elif name == "qdylora_at_rmax":
            set_active_rank(model, r)
        lm_step(model, optimizer, ids)

    for step in range(steps + 3):  # 3 warm-up steps each, not timed
        for name in names[step % 3:] + names[:step % 3]:  # rotating order: drift hits every arm alike
            _, seconds = timed(lambda: train_step(name, models[name], optimizers[name]))
            if step >= 3:
                times[name].append(seconds)
    qlora = statistics.median(times["qlora"])
    return {"qdylora_s": spread(times["qdylora"]), "qlora_s": spread(times["qlora"]),
            "qdylora_at_rmax_s": spread(times["qdylora_at_rmax"]),
            "ratio": statistics.median(times["qdylora"]) / qlora,
            "ratio_at_rmax": statistics.median(times["qdylora_at_rmax"]) / qlora, "batch": batch, "seq": seq, "r": r}


def p3_sweep_ratio(base: Path, work: Path, ranks: list[int], n_examples: int, seq: int, repeats: int) -> dict:
    # A trained-looking adapter: random B, so ranks differ (PEFT starts B at zero).
    torch.manual_seed(0)
    model = attach_lora(load_base_model(base, QuantSettings()), rank=64, alpha=16, dropout=0.0,
                        target_modules="all-linear", dynamic=True, gradient_checkpointing=False)
    randomize_lora_b(model, 0.01)
    adapter = work / "adapter"
    model.save_pretrained(adapter)
    write_adapter_meta(adapter, {"method": "qdylora", "dynamic": True, "r_min": 1, "r_max": 64, "lora_alpha": 16})
    del model
    examples = random_examples(n_examples, seq)

    def ours() -> list[float]:
        sweep = RankSweep(base, adapter, examples, quant=QuantSettings(), tokenizer=Pad(), batch_size=8)
        losses = [sweep.evaluate_rank(r)["eval_loss"] for r in ranks]
        sweep.close()
        return losses

    def naive() -> list[float]:
        losses = []
        for r in ranks:
            exported = export_adapter(adapter, r, work / f"r{r}", force=True)  # what `dyrank export` runs
            model = load_adapter(base, exported, QuantSettings())
            losses.append(evaluate(model, examples, Pad(), 8)["eval_loss"])
            del model
            free_cuda_cache()
        return losses

    times = {"ours": [], "naive": []}
    for rep in range(repeats):
        for name, fn in (("ours", ours), ("naive", naive)) if rep % 2 == 0 else (("naive", naive), ("ours", ours)):
            losses, seconds = timed(fn)
            times[name].append(seconds)
            times.setdefault(f"{name}_losses", losses)
    same = max(abs(a - b) / abs(b) for a, b in zip(times["ours_losses"], times["naive_losses"]))
    ratio = statistics.median(times["ours"]) / statistics.median(times["naive"])
    return {"ours_s": spread(times["ours"]), "naive_s": spread(times["naive"]), "ratio": ratio, "ranks": ranks,
            "max_relative_loss_difference": same}


def main() -> None:
    arguments = parser(tiny="tiny shape: a CPU smoke test of this script")
    arguments.add_argument("--steps", type=int, default=60)
    args = arguments.parse_args()
    shape, shape_name = tiny_or_smollm2(args.tiny)
    result = header("bench/gpu.py", shape_name)
    with tempfile.TemporaryDirectory() as tmp:
        base = save_random_base(shape, Path(tmp) / "base")
        result["P1"] = p1_step_ratio(base, args.steps, batch=4 if args.tiny else 8, seq=64 if args.tiny else 512)
        print("P1", json.dumps(result["P1"]), flush=True)
        result["P3"] = p3_sweep_ratio(base, Path(tmp), [1, 2, 4, 8, 16, 32, 48, 64], n_examples=16 if args.tiny else 64,
                                      seq=64 if args.tiny else 256, repeats=3)
        print("P3", json.dumps(result["P3"]), flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
