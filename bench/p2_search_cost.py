"""P2: what a rank search costs, in device-seconds at equal steps.

    python3 bench/p2_search_cost.py --out bench/results/p2_search_cost.json          # on a CUDA machine
    python3 bench/p2_search_cost.py --tiny --out /tmp/p2.json                         # CPU smoke test

P2a  ranks 1, 2, 4, 8, 16, 32, 64 known in advance:
     (1 QDyLoRA training + 7 evaluations) / (7 QLoRA trainings + 7 evaluations)             goal <= 0.2
P2b  every rank 1..64:
     (1 QDyLoRA training + 64 evaluations) / (64 QLoRA trainings + 64 evaluations)          goal <= 0.05
     the 64 QLoRA trainings and evaluations extrapolated from the 7 measured (least-squares line in rank).

Every training is the same number of steps on the same NF4 base, batch and data, timed from the base load to
the last optimizer step; every evaluation is one pass over the same examples with the model already in
memory (QLoRA's evaluations get no load cost, which favours the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _common import (Pad, header, lm_step, parser, random_examples, save_random_base, timed, tiny_or_smollm2,
                     write_result)

from evaluators.metrics import evaluate  # noqa: E402
from trainers.adapters import attach_lora  # noqa: E402
from trainers.models import QuantSettings, default_device, load_base_model  # noqa: E402
from trainers.optim import build_optimizer  # noqa: E402
from trainers.methods.qdylora import RankSampler, set_active_rank  # noqa: E402

KNOWN_RANKS = [1, 2, 4, 8, 16, 32, 64]


def train(base: Path, rank: int, dynamic: bool, steps: int, batch: int, seq: int, vocab: int):
    """A trained model and the device-seconds its training took (load included)."""
    def run():
        torch.manual_seed(0)
        model = attach_lora(load_base_model(base, QuantSettings()), rank=rank, alpha=16, dropout=0.1,
                            target_modules="all-linear", dynamic=dynamic, gradient_checkpointing=False).train()
        optimizer = build_optimizer("paged_adamw_32bit", model.parameters(), 1e-3, 0.0)
        sampler = RankSampler(1, rank, seed=1) if dynamic else None
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            if sampler:
                set_active_rank(model, sampler.sample())
            ids = torch.randint(1, vocab, (batch, seq), generator=g).to(default_device())
            lm_step(model, optimizer, ids)
        return model
    return timed(run)


def line_sum(xs: list[int], ys: list[float], upto: int) -> float:
    """Sum over r = 1..upto of the least-squares line through (xs, ys)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return sum(my + slope * (r - mx) for r in range(1, upto + 1))


def main() -> None:
    arguments = parser(tiny="tiny shape: a CPU smoke test of this script")
    arguments.add_argument("--steps", type=int, default=40)
    args = arguments.parse_args()
    shape, shape_name = tiny_or_smollm2(args.tiny)
    batch, seq, n_eval = (4, 64, 16) if args.tiny else (8, 256, 64)
    examples = random_examples(n_eval, seq, vocab=384)
    result = header("bench/p2_search_cost.py", shape_name)
    result.update(steps=args.steps, batch=batch, seq=seq, eval_examples=n_eval)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        base = save_random_base(shape, Path(tmp) / "base")
        scores = lambda model: evaluate(model, examples, Pad(), 16)["eval_loss"]  # noqa: E731
        # QDyLoRA first and once; QLoRA trainings follow in rank order (each its own fresh base load).
        model, dy_train = train(base, 64, True, args.steps, batch, seq, 384)
        dy_eval = {}
        for r in range(1, 65):
            set_active_rank(model, r)
            _, dy_eval[r] = timed(lambda: scores(model))
        del model
        q_train, q_eval = {}, {}
        for r in KNOWN_RANKS:
            model, q_train[r] = train(base, r, False, args.steps, batch, seq, 384)
            _, q_eval[r] = timed(lambda: scores(model))
            del model
            print(f"qlora r{r}: train {q_train[r]:.2f} s, eval {q_eval[r]:.3f} s", flush=True)
    p2a_dy = dy_train + sum(dy_eval[r] for r in KNOWN_RANKS)
    p2a_q = sum(q_train.values()) + sum(q_eval.values())
    p2b_dy = dy_train + sum(dy_eval.values())
    p2b_q = line_sum(KNOWN_RANKS, [q_train[r] for r in KNOWN_RANKS], 64) + line_sum(KNOWN_RANKS, [q_eval[r] for r in KNOWN_RANKS], 64)
    result.update(qdylora_train_s=dy_train, qdylora_eval_s=dy_eval, qlora_train_s=q_train, qlora_eval_s=q_eval,
                  P2a={"qdylora_s": p2a_dy, "qlora_s": p2a_q, "ratio": p2a_dy / p2a_q},
                  P2b={"qdylora_s": p2b_dy, "qlora_s_extrapolated": p2b_q, "ratio": p2b_dy / p2b_q})
    print("P2a", json.dumps(result["P2a"]), "\nP2b", json.dumps(result["P2b"]), flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
