"""P5: the rank sweep's wall time over 1, 2 and 4 evaluator actors, on SmolLM2-135M-Instruct and countries (CPU).

    .venv/bin/python bench/p5_fanout.py --out bench/results/p5_fanout.json
    .venv/bin/python bench/p5_fanout.py --smoke --out /tmp/p5.json     # tiny model, 2 ranks, N = 1, 2 (seconds)

The pipeline's own RankEvaluator actors (one base load each, dequantized once) on a private Ray; each actor
holds one CPU and runs one torch thread, so actors do not fight over cores. The adapter is an r_max-64 LoRA with
random B (PEFT starts B at zero, which would make every rank the same model). Wall time = first rank sent to
last result back, actors already loaded; ranks are dispatched as the pipeline dispatches them (the least-loaded
actor takes the next, with a task queued behind the running one). N = 1, 2, 4
interleaved, repeated; speedup(N) = median wall(1) / median wall(N); goal speedup(2) / 2 >= 0.9.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import ray
import torch

from _common import REPO, header, parse, parser, randomize_lora_b, spread, timed, write_result

from orchestrator.actors import RankEvaluator, actor_options, read_adapter_files  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.sweep_stage import QUEUE_DEPTH  # noqa: E402
from trainers.adapters import attach_lora  # noqa: E402
from trainers.models import load_base_model, resolve_base  # noqa: E402
from trainers.methods.base import write_adapter_meta  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "smollm2-countries.yaml"


def random_adapter(cfg, folder: Path) -> Path:
    torch.manual_seed(0)
    r_max = cfg.adapter.r_max
    model = attach_lora(load_base_model(resolve_base(cfg.model.source)), rank=r_max, alpha=16, dropout=0.0,
                        target_modules="all-linear", dynamic=True, gradient_checkpointing=False)
    randomize_lora_b(model, 0.02)
    model.save_pretrained(folder)
    write_adapter_meta(folder, {"method": "qdylora", "dynamic": True, "r_min": 1, "r_max": r_max, "lora_alpha": 16})
    return folder


def sweep(actors, ranks: list[int], files_ref) -> None:
    """The pipeline's dispatch (orchestrator/sweep_stage.py): the least-loaded actor takes the next rank, with up to
    QUEUE_DEPTH tasks queued on each, so the next one is already waiting there when one finishes."""
    pending, queued, waiting = list(ranks), Counter(), {}
    while pending or waiting:
        while pending and (actor := min(actors, key=lambda a: queued[a])) and queued[actor] < QUEUE_DEPTH:
            waiting[actor.evaluate_ranks.remote([pending.pop(0)], "validation", "a", [files_ref])] = actor
            queued[actor] += 1
        [done], _ = ray.wait(list(waiting))
        queued[waiting.pop(done)] -= 1
        ray.get(done)


def main() -> None:
    arguments = parser(smoke="examples/tiny.yaml's model and data, 2 ranks, N = 1 and 2 once: a smoke test of this script")
    arguments.add_argument("--ranks", type=int, default=16, help="ranks swept (1..N)")
    arguments.add_argument("--repeats", type=int, default=2)
    arguments.add_argument("--sizes", default="1,2,4")
    arguments.add_argument("--config", default=str(EXAMPLE), help="pipeline config whose model, data and evaluation to use")
    args = parse(arguments)
    if args.smoke:
        args.config, args.ranks, args.repeats, args.sizes = str(REPO / "examples" / "tiny.yaml"), 2, 1, "1,2"
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = load_config(args.config, ["resources.evaluator_cpus=1"])
    ray.init(address="local", num_cpus=max(sizes), include_dashboard=False, log_to_driver=False)
    tmp = tempfile.TemporaryDirectory()
    files_ref = ray.put(read_adapter_files(random_adapter(cfg, Path(tmp.name) / "adapter")))
    ranks = list(range(1, args.ranks + 1))
    pool = [RankEvaluator.options(**actor_options(cfg, "evaluator")).remote(cfg.job(), 1.0)
            for _ in range(max(sizes))]
    ray.get([a.evaluate_rank.remote(cfg.adapter.r_max, "validation", "a", [files_ref]) for a in pool])  # load + attach + warm up
    times = {n: [] for n in sizes}
    for rep in range(args.repeats):
        for n in (sizes if rep % 2 == 0 else list(reversed(sizes))):
            _, seconds = timed(lambda: sweep(pool[:n], ranks, files_ref))
            times[n].append(seconds)
            print(f"N={n}: {seconds:.1f} s", flush=True)
    ray.shutdown()
    tmp.cleanup()
    one = statistics.median(times[1])
    result = header("bench/p5_fanout.py", f"{cfg.model.source}, {cfg.data.dataset or cfg.data.train_file} validation")
    result.update(ranks=len(ranks), eval_examples=cfg.evaluation.max_samples, load_average=os.getloadavg(),
                  seconds={str(n): spread(v) for n, v in times.items()},
                  speedup={str(n): one / statistics.median(v) for n, v in times.items()},
                  efficiency={str(n): one / statistics.median(v) / n for n, v in times.items()})
    print(json.dumps({k: result[k] for k in ("speedup", "efficiency")}), flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
