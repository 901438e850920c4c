"""Step time, peak memory and eval loss of every method, side by side, through the one training recipe.

    .venv/bin/python bench/methods.py                                   # tiny model -> bench/results/methods-tiny.json
    .venv/bin/python bench/methods.py --config examples/smollm2-countries.yaml --steps 12 --out bench/results/methods-smollm2.json
    .venv/bin/python bench/methods.py --smoke --out /tmp/methods.json    # qlora and qdylora, 2 steps (seconds)

Step time: every method's recipe is set up in this one process, then their optimizer steps are interleaved
(step i of every method, in a rotating order, before step i+1 of any), so drift on a shared machine hits all
alike; the first `--warmup` steps are not timed. Eval loss: each trained model in memory on the validation
split (the pipeline's evaluators give the same number from the export; tests/trainers/test_methods.py).
Peak memory cannot be told apart between recipes sharing a process, so each method also runs alone in a
fresh subprocess (all libraries imported before the measurement starts): CUDA max allocated on a GPU, peak
RSS minus the RSS at setup on the CPU (trainers/memory.py).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import REPO, RESULTS, TRAINING_LIBRARIES, parse, parser as bench_parser, stamp, write_result

# method -> overrides of the adapter section (the rest of the config is shared)
METHODS = {
    "qlora": ["adapter.method=qlora", "adapter.rank=8"],
    "qdylora": ["adapter.method=qdylora", "adapter.r_min=1", "adapter.r_max=8"],
    "lora": ["adapter.method=lora", "adapter.rank=8"],
    "dylora": ["adapter.method=dylora", "adapter.r_min=1", "adapter.r_max=8"],
    "adalora": ["adapter.method=adalora", "adapter.rank=8", "adapter.adalora.init_r=12"],
    "bitlora-1": ["adapter.method=bitlora", "adapter.rank=8", "adapter.bitlora.bits='1'"],
    "bitlora-1.58": ["adapter.method=bitlora", "adapter.rank=8", "adapter.bitlora.bits='1.58'"],
    "galore": ["adapter.method=galore"],
    "galore8bit": ["adapter.method=galore8bit"],
}
SIXTEEN_BIT = {"lora", "dylora", "adalora", "galore", "galore8bit"}


def method_config(config: str, name: str, steps: int, extra: list[str]):
    from orchestrator.config import load_config

    shared = [f"training.max_steps={steps}", "training.checkpoint_every=100000", "baselines.ranks=[]",
              "evaluation.ranks=all", f"quantization.load_in_4bit={'false' if name in SIXTEEN_BIT else 'true'}"]
    if name == "adalora":
        shared.append(f"adapter.adalora.tfinal={max(1, steps // 4)}")
    return load_config(config, [*shared, *METHODS[name], *extra])


def _import_everything() -> None:
    """So a subprocess's memory measurement does not count importing a library."""
    from trainers.methods import make_trainer, method_names

    for name in method_names():
        make_trainer(name)
    import evaluators.metrics  # noqa: F401


def peak_alone(config: str, name: str, steps: int, extra: list[str], out: Path) -> dict:
    """One method alone in this process: setup + `steps` steps; its cost summary."""
    from trainers.finetune import FinetuneRecipe

    _import_everything()
    recipe = FinetuneRecipe(method_config(config, name, steps, extra), out, progress=False)
    recipe.setup()
    result = recipe.train()
    return asdict(result.costs)


def interleaved(config: str, names: list[str], steps: int, warmup: int, extra: list[str], scratch: Path) -> dict:
    import torch

    from evaluators.metrics import evaluate
    from trainers.batching import encode_all
    from trainers.datasets.splits import load_splits
    from trainers.finetune import FinetuneRecipe

    recipes = {}
    for name in names:
        recipes[name] = FinetuneRecipe(method_config(config, name, steps, extra), scratch / name, progress=False)
        recipes[name].setup()
        recipes[name].model.train()
    times = {name: [] for name in names}
    losses = {name: [] for name in names}
    for step in range(steps):
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            row = recipes[name].train_step(step)
            losses[name].append(row["train_loss"])
            if step >= warmup:
                times[name].append(row["step_seconds"])
    rows = {}
    for name, recipe in recipes.items():
        examples = encode_all(load_splits(recipe.cfg.data)["validation"], recipe.tokenizer, recipe.cfg.data.max_seq_len)
        with torch.no_grad():
            eval_loss = evaluate(recipe.model.eval(), examples, recipe.tokenizer, recipe.cfg.evaluation.batch_size)["eval_loss"]
        rows[name] = {"step_seconds": times[name], "first_train_loss": losses[name][0],
                      "last_train_loss": losses[name][-1], "eval_loss": eval_loss}
    return rows


def _summarise(rows: dict) -> None:
    """Medians and the ratios to QLoRA, from whatever has been measured so far."""
    ref = statistics.median(rows["qlora"]["step_seconds"]) if "qlora" in rows else None
    ref_mem = rows.get("qlora", {}).get("peak_memory_bytes")
    for row in rows.values():
        med = statistics.median(row["step_seconds"])
        row.update(step_median=med, step_min=min(row["step_seconds"]), step_max=max(row["step_seconds"]),
                   step_ratio_to_qlora=med / ref if ref else None,
                   peak_ratio_to_qlora=row["peak_memory_bytes"] / ref_mem if ref_mem and "peak_memory_bytes" in row
                   else None)


def main() -> None:
    parser = bench_parser(smoke="the tiny config, qlora and qdylora, 2 steps: a smoke test of this script",
                          out=RESULTS / "methods-tiny.json")
    parser.add_argument("--config", default=str(REPO / "examples" / "methods-tiny.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--jobs", type=int, default=1, help="memory runs side by side (each in its own process)")
    parser.add_argument("--alone", help=argparse.SUPPRESS)  # internal: one method's peak memory, in a subprocess
    args = parse(parser)
    if args.smoke:
        args.steps, args.warmup, args.methods = 2, 1, ["qlora", "qdylora"]
        args.extra.append("baselines.methods=[]")  # the config's AdaLoRA baseline needs more steps than 2
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="dyrank-bench-methods-"))
    if args.alone:
        print(json.dumps(peak_alone(args.config, args.alone, args.steps, args.extra, scratch / args.alone)))
        return

    import torch

    torch.set_num_threads(2)
    rows = interleaved(args.config, args.methods, args.steps, args.warmup, args.extra, scratch)
    result = stamp("bench/methods.py", *TRAINING_LIBRARIES, config=Path(args.config).name, steps=args.steps,
                   warmup=args.warmup)
    result.update(overrides=args.extra, methods=rows)
    _summarise(rows)
    write_result(result, args.out)  # step times and eval losses are kept even if a memory run below is cut short
    print("step time / qlora:", {n: round(r["step_ratio_to_qlora"] or float("nan"), 3) for n, r in rows.items()},
          flush=True)

    def alone(name: str) -> dict:
        cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--alone", name,
               *[f"--set={e}" for e in args.extra]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    # Each peak is its own process's (CUDA max allocated or peak RSS), so several can run at once where the
    # machine has the room (--jobs: 9 on the 16-core GPU box; the default 1 suits 2 CPU cores, which side-by-side
    # runs would only share).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, measured in zip(args.methods, pool.map(alone, args.methods)):
            rows[name].update({k: measured[k] for k in ("peak_memory_bytes", "peak_memory_kind", "trainable_params",
                                                         "adapter_bytes")})
            print(name, {k: v for k, v in rows[name].items() if k != "step_seconds"}, flush=True)
            _summarise(rows)
            write_result(result, args.out)
    print(f"{'method':<14}{'step/qlora':>11}{'peak MiB':>10}{'peak/qlora':>11}{'eval_loss':>10}{'trainable':>10}{'saved KiB':>10}")
    for name, r in rows.items():
        print(f"{name:<14}{r['step_ratio_to_qlora'] or float('nan'):>11.2f}{r['peak_memory_bytes'] / 2**20:>10.1f}"
              f"{r['peak_ratio_to_qlora'] or float('nan'):>11.2f}{r['eval_loss']:>10.4f}{r['trainable_params']:>10}"
              f"{r['adapter_bytes'] / 1024:>10.1f}")


if __name__ == "__main__":
    main()
