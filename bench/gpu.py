"""P1 on a GPU; it needs only trainers/ (no Ray, MLflow or pydantic on the GPU box). P3 is bench/p3_eval_arms.py.

    python3 bench/gpu.py --out bench/results/gpu.json          # on a CUDA machine
    python3 bench/gpu.py --tiny --out /tmp/gpu-smoke.json      # smoke test on the CPU

P1  step-time ratio: QDyLoRA step (r_max 64, rank sampled per step) / QLoRA step at r 64, same NF4 base,
    batch and sequence length; >= 30 interleaved steps each, median and spread.
Models are SmolLM2-135M's shape with random weights (built from a config, nothing downloaded).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from _common import (header, lm_step, parser, save_random_base,
                     spread, timed, tiny_or_smollm2, write_result)

from trainers.adapters import attach_lora  # noqa: E402
from trainers.models import QuantSettings, default_device, load_base_model  # noqa: E402
from trainers.optim import build_optimizer  # noqa: E402
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
    write_result(result, args.out)


if __name__ == "__main__":
    main()
