"""Does training in the compute dtype (bf16 autocast) learn as well as the fp32 path it replaced?

    .venv/bin/python bench/autocast_quality.py --config examples/smollm2-countries.yaml --steps 60 \\
        --out bench/results/autocast-quality-smollm2.json
    .venv/bin/python bench/autocast_quality.py --smoke --out /tmp/autocast-smoke.json      # tiny model, seconds

QDyLoRA as the demo trains it (`examples/smollm2-countries.yaml`: r_max 64, 60 steps of batch 8), once per
seed with `quantization.compute_dtype=float32` (the fp32 path: no autocast) and once per seed in the compute
dtype (bfloat16 here: autocast). Each trained model is scored in memory on the whole validation split at a few
ranks, all with the same (fp32-activations) evaluation, so only the training precision differs. The claim holds
when every bf16 loss lies within the fp32 seeds' spread widened by that spread (|bf16 - fp32 mean| <=
max(fp32 range, 1 % of the mean)); the script records the figures and the verdict, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from _common import REPO, TRAINING_LIBRARIES, parse, stamp, write_result

RANKS = (1, 4, 16, 64)
SMOKE = ["model.source=tiny-llama", "data.dataset=tiny-qa", "data.max_seq_len=48", "adapter.r_max=8"]
PIPELINE_SECTIONS = ("selection", "baselines", "tracking", "resources")
UPCAST_ARM = "bfloat16_upcast"  # bf16 autocast with PEFT's fp32 embedding, norms and lm_head (--add-upcast)


def upcast_like_peft(model) -> None:
    """PEFT's prepare_model_for_kbit_training cast (peft/utils/other.py): every 16-bit parameter that is not 4-bit
    goes to fp32: the embedding, the norms and the lm_head, so the residual stream runs in fp32 under autocast.
    Called on the trained-to-be model, not through PEFT's function, which would also freeze the adapters."""
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)


def train_and_score(config: str, steps: int, seed: int, dtype: str, extra: list[str], scratch: Path,
                    upcast: bool = False) -> dict:
    from evaluators.metrics import evaluate
    from trainers.batching import encode_all
    from trainers.config import load_job_config
    from trainers.datasets.splits import load_splits
    from trainers.finetune import FinetuneRecipe
    from trainers.methods.qdylora import set_active_rank

    job = load_job_config(config, [f"training.max_steps={steps}", f"training.seed={seed}",
                                   f"quantization.compute_dtype={dtype}", "training.checkpoint_every=100000",
                                   "adapter.method=qdylora", *extra], ignore_sections=PIPELINE_SECTIONS)
    recipe = FinetuneRecipe(job, scratch / f"{dtype}-{seed}{'-upcast' if upcast else ''}", progress=False)
    recipe.setup()
    if upcast:
        upcast_like_peft(recipe.model)
    recipe.model.train()
    losses = [recipe.train_step(step)["train_loss"] for step in range(steps)]
    examples = encode_all(load_splits(job.data)["validation"], recipe.tokenizer, job.data.max_seq_len)
    scores = {}
    for rank in [r for r in RANKS if r <= job.adapter.r_max]:
        set_active_rank(recipe.model, rank)
        scores[rank] = evaluate(recipe.model, examples, recipe.tokenizer, job.evaluation.batch_size)["eval_loss"]
    embedding = recipe.model.get_input_embeddings().weight.dtype
    return {"train_losses": losses, "eval_loss": scores, "embedding_dtype": str(embedding).removeprefix("torch.")}


def verdict(runs: dict) -> dict:
    """Per rank: the fp32 seeds' mean and range, each bf16 seed's distance, and whether it is within tolerance;
    the same for the bf16 arm with PEFT's fp32 upcast where it was run (`--add-upcast`)."""
    out = {}
    ranks = runs["float32"][0]["eval_loss"].keys()
    for rank in ranks:
        fp32 = [r["eval_loss"][rank] for r in runs["float32"]]
        mean, spread = statistics.mean(fp32), max(fp32) - min(fp32)
        tolerance = max(spread, 0.01 * mean)
        row = {"fp32": fp32, "fp32_range": spread, "tolerance": tolerance}
        for arm, key, within in (("bfloat16", "bf16", "within"), (UPCAST_ARM, "bf16_upcast", "upcast_within")):
            if runs.get(arm):
                row[key] = [r["eval_loss"][rank] for r in runs[arm]]
                row[within] = all(abs(b - mean) <= tolerance for b in row[key])
        out[str(rank)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "examples" / "smollm2-countries.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--bf16-seeds", type=int, default=None, help="train bf16 on the first N seeds only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps: checks the script still runs")
    parser.add_argument("--add-bf16", type=int, nargs="+", metavar="SEED",
                        help="train these bf16 seeds and add them to the existing --out (its fp32 runs kept)")
    parser.add_argument("--add-upcast", type=int, nargs="+", metavar="SEED",
                        help="train these seeds in bf16 with PEFT's fp32 upcast of the embedding, norms and lm_head, "
                             "and add them to the existing --out as a third arm: tells the residual stream's "
                             "precision apart from the LoRA branch's")
    parser.add_argument("--out", required=True)
    args = parse(parser)
    if (args.add_bf16 or args.add_upcast) and not Path(args.out).is_file():
        parser.error(f"--out {args.out}: no recorded run to add seeds to; record one first, without --add-*")
    if args.smoke:
        args.extra, args.steps, args.seeds = [*SMOKE, *args.extra], 2, [0, 1]
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="dyrank-bench-autocast-"))
    if args.add_bf16 or args.add_upcast:  # more bf16 runs against the recorded fp32 ones, with its settings
        result = json.loads(Path(args.out).read_text())
        for seed in args.add_bf16 or []:
            run = train_and_score(args.config, result["steps"], seed, "bfloat16", result["overrides"], scratch)
            result["runs"]["bfloat16"].append(json.loads(json.dumps(run)))  # string rank keys, as the recorded ones
            result["bf16_seeds"].append(seed)
        for seed in args.add_upcast or []:
            run = train_and_score(args.config, result["steps"], seed, "bfloat16", result["overrides"], scratch,
                                  upcast=True)
            result["runs"].setdefault(UPCAST_ARM, []).append(json.loads(json.dumps(run)))
            result.setdefault("upcast_seeds", []).append(seed)
    else:
        bf16_seeds = args.seeds[:args.bf16_seeds]
        runs = {dtype: [train_and_score(args.config, args.steps, seed, dtype, args.extra, scratch) for seed in seeds]
                for dtype, seeds in (("float32", args.seeds), ("bfloat16", bf16_seeds))}
        result = stamp("bench/autocast_quality.py", *TRAINING_LIBRARIES, config=Path(args.config).name,
                       steps=args.steps, seeds=args.seeds, bf16_seeds=bf16_seeds, overrides=args.extra,
                       smoke=args.smoke)
        result["runs"] = runs
    result["verdict"] = verdict(result["runs"])
    write_result(result, args.out)
    for rank, row in result["verdict"].items():
        upcast = f"  bf16+upcast {row['bf16_upcast']}  within: {row['upcast_within']}" if "bf16_upcast" in row else ""
        print(f"rank {rank:>3}: fp32 {row['fp32']}  bf16 {row['bf16']}  within: {row['within']}{upcast}")


if __name__ == "__main__":
    main()
