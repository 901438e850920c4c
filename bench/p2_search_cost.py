"""P2: what a rank search costs, in device-seconds at equal steps.

    python3 bench/p2_search_cost.py --out bench/results/p2_search_cost.json          # on a CUDA machine
    python3 bench/p2_search_cost.py --smoke --out /tmp/p2.json                        # CPU smoke test (seconds)

P2a  ranks 1, 2, 4, 8, 16, 32, 64 known in advance:
     (1 QDyLoRA training + 7 evaluations) / (7 QLoRA trainings + 7 evaluations)             goal <= 0.2
P2b  every rank 1..64:
     (1 QDyLoRA training + 64 evaluations) / (64 QLoRA trainings + 64 evaluations)          goal <= 0.05
     the 64 QLoRA trainings and evaluations extrapolated from the 7 measured (least-squares line in rank).

Every training is the same number of steps on the same NF4 base, batch and data, timed from the base load to
the last optimizer step; every evaluation is one pass over the same examples with the model already in
memory (QLoRA's evaluations get no load cost, which favours the baseline). The 8 trainings (QDyLoRA and the 7
QLoRA ranks) are repeated `--repeats` times, interleaved in a rotating order so drift hits every arm alike;
the ratios use the medians, and each repeat's own ratio gives the spread.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from _common import (Pad, header, lm_step, parse, parser, random_examples, save_random_base, spread, timed,
                     tiny_or_smollm2, write_result)

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


def ratios(dy_train: float, dy_eval: dict, q_train: dict, q_eval: dict) -> dict:
    """P2a and P2b from one set of times (one repeat's, or the medians); q_* are keyed by the known ranks."""
    known = sorted(q_train)
    p2a_dy = dy_train + sum(dy_eval[r] for r in known)
    p2a_q = sum(q_train[r] + q_eval[r] for r in known)
    p2b_dy = dy_train + sum(dy_eval.values())
    p2b_q = (line_sum(known, [q_train[r] for r in known], len(dy_eval))
             + line_sum(known, [q_eval[r] for r in known], len(dy_eval)))
    return {"P2a": {"qdylora_s": p2a_dy, "qlora_s": p2a_q, "ratio": p2a_dy / p2a_q},
            "P2b": {"qdylora_s": p2b_dy, "qlora_s_extrapolated": p2b_q, "ratio": p2b_dy / p2b_q}}


def main() -> None:
    arguments = parser(smoke="tiny shape, 2 steps, 1 repeat: a CPU smoke test of this script")
    arguments.add_argument("--steps", type=int, default=40)
    arguments.add_argument("--repeats", type=int, default=3)
    args = parse(arguments)
    known, r_max = KNOWN_RANKS, 64
    if args.smoke:  # seconds, not a measurement: fewer steps, ranks and examples
        args.steps, args.repeats, known, r_max = 1, 1, [1, 4], 4
    shape, shape_name = tiny_or_smollm2(args.smoke)
    batch, seq, n_eval = (2, 32, 4) if args.smoke else (8, 256, 64)
    examples = random_examples(n_eval, seq, vocab=384)
    result = header("bench/p2_search_cost.py", shape_name)
    result.update(steps=args.steps, batch=batch, seq=seq, eval_examples=n_eval, repeats=args.repeats)
    arms = ["qdylora", *known]
    train_s = {arm: [] for arm in arms}
    eval_s = {"qdylora": {r: [] for r in range(1, r_max + 1)}, **{r: [] for r in known}}
    with tempfile.TemporaryDirectory() as tmp:
        base = save_random_base(shape, Path(tmp) / "base")
        scores = lambda model: evaluate(model, examples, Pad(), 16)["eval_loss"]  # noqa: E731
        for rep in range(args.repeats):
            for arm in arms[rep % len(arms):] + arms[:rep % len(arms)]:  # each repeat starts one arm later
                dynamic = arm == "qdylora"
                model, seconds = train(base, r_max if dynamic else arm, dynamic, args.steps, batch, seq, 384)
                train_s[arm].append(seconds)
                if dynamic:
                    for r in range(1, r_max + 1):
                        set_active_rank(model, r)
                        eval_s[arm][r].append(timed(lambda: scores(model))[1])
                else:
                    eval_s[arm].append(timed(lambda: scores(model))[1])
                del model
                print(f"repeat {rep} {arm}: train {seconds:.2f} s", flush=True)
    median = statistics.median
    each = [ratios(train_s["qdylora"][i], {r: v[i] for r, v in eval_s["qdylora"].items()},
                   {r: train_s[r][i] for r in known}, {r: eval_s[r][i] for r in known})
            for i in range(args.repeats)]
    at_medians = ratios(median(train_s["qdylora"]), {r: median(v) for r, v in eval_s["qdylora"].items()},
                        {r: median(train_s[r]) for r in known}, {r: median(eval_s[r]) for r in known})
    for measure in ("P2a", "P2b"):
        at_medians[measure]["ratio_per_repeat"] = spread([row[measure]["ratio"] for row in each])
    result.update(qdylora_train_s=spread(train_s["qdylora"]),
                  qdylora_eval_s={r: spread(v) for r, v in eval_s["qdylora"].items()},
                  qlora_train_s={r: spread(train_s[r]) for r in known},
                  qlora_eval_s={r: spread(eval_s[r]) for r in known}, raw_train_s=train_s, **at_medians)
    print("P2a", json.dumps(result["P2a"]), "\nP2b", json.dumps(result["P2b"]), flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
