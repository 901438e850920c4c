"""Ranks per forward: EvalSession scoring one QDyLoRA adapter's ranks k at a time (evaluation.ranks_per_forward),
against one forward per rank (k = 1), on the evaluators' own path (completion-only loss, one base load).

    python3 bench/multirank_eval.py --out bench/results/multirank_eval.json             # SmolLM2 + countries
    python3 bench/multirank_eval.py --set model.source=/tmp/smollm2-random ... --out ...  # a random base (GPU box)
    python3 bench/multirank_eval.py --smoke --out /tmp/multirank-smoke.json              # tiny preset, seconds

How (trainers/methods/qdylora/multirank.py): the batch is repeated k times and a per-row mask after lora_A
applies rank b_j and alpha / b_j to block j, so the base matmuls do k times the rows in one call instead of
k calls. It can only win where a forward is launch- or overhead-bound; the losses must agree with k = 1.
The result picks the default per device type (evaluators/session.py RANKS_PER_FORWARD_DEFAULT).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from _common import parser, spread, stamp, timed, write_result
from _eval_bench import add_config_arguments, b_std, job_from_arguments, save_dynamic_adapter

from evaluators.session import EvalSession  # noqa: E402

RANKS = [1, 2, 4, 8, 16, 32, 48, 64]


def main() -> None:
    arguments = parser()
    add_config_arguments(arguments, "examples/smollm2-countries.yaml")
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument("--group-sizes", default="1,2,4,8", help="the k values to compare (1 is the reference)")
    args = arguments.parse_args()
    cfg = job_from_arguments(args)
    repeats = 1 if args.smoke else args.repeats
    ranks = [r for r in RANKS if r <= cfg.adapter.r_max]
    sizes = [int(k) for k in args.group_sizes.split(",")]
    if 1 not in sizes:
        sizes.insert(0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_dynamic_adapter(cfg, Path(tmp) / "adapter", b_std(args))
        session = EvalSession(cfg)
        session.attach_adapter_dir(adapter)

        def sweep(k: int) -> dict[int, float]:
            session.cfg.evaluation.ranks_per_forward = k
            return {s.rank: s.metrics["eval_loss"] for s in session.score_ranks("validation", ranks)}

        times, losses = {k: [] for k in sizes}, {}
        for rep in range(repeats + 1):  # round 0 warms up
            for k in sizes if rep % 2 == 0 else list(reversed(sizes)):
                losses[k], seconds = timed(lambda: sweep(k))
                if rep:
                    times[k].append(seconds)
    one = statistics.median(times[1])
    result = stamp("bench/multirank_eval.py", "torch", "transformers", "peft", config=str(args.config),
                   smoke=args.smoke, model=cfg.model.source, ranks=ranks, examples=len(session.examples["validation"]),
                   batch_size=cfg.evaluation.batch_size, device=str(next(session.model.parameters()).device))
    result.update(seconds={k: spread(v) for k, v in times.items()},
                  ratio_over_one_rank_per_forward={k: statistics.median(v) / one for k, v in times.items()},
                  max_relative_loss_difference={k: max(abs(losses[k][b] - losses[1][b]) / losses[1][b] for b in ranks)
                                                for k in sizes},
                  losses=losses)
    print(json.dumps({k: result[k] for k in ("ratio_over_one_rank_per_forward", "max_relative_loss_difference")}),
          flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
