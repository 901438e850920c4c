"""G1: dyrank's training step against the stack users already run, transformers `Trainer` + PEFT QLoRA.

    .venv/bin/python bench/g1_trainer_peer.py --config examples/smollm2-countries.yaml --steps 110 --warmup 10 \\
        --out bench/results/g1-smollm2-cpu.json
    .venv/bin/python bench/g1_trainer_peer.py --peer sft --arms dyrank-qlora dyrank-qdylora-slice --steps 110 \
        --out bench/results/g1-sft-smollm2-cpu.json                                     # TRL's SFTTrainer as the peer
    .venv/bin/python bench/g1_trainer_peer.py --no-peer --steps 210 --out bench/results/p1-smollm2-cpu.json  # P1 only
    .venv/bin/python bench/g1_trainer_peer.py --smoke --out /tmp/g1-smoke.json          # tiny model, seconds

Arms, all in this one process on the same NF4 + double-quant base, the same examples in the same batches,
LoRA on the same targets (rank 64, the config's alpha and dropout), the same optimizer, lr schedule, gradient
checkpointing and clipping, and the same compute dtype (bf16 autocast where the device runs bf16 natively;
Trainer's `bf16=True`, or `fp16=True` on GPUs without bf16):
- `peer`: a `transformers.Trainer` on `prepare_model_for_kbit_training` + `get_peft_model` (what a QLoRA user
  scripts), or with `--peer sft` TRL's `SFTTrainer` given the base and a `peft_config`; its whole per-step cycle
  is timed (batch fetch, step, its logging), as a user pays it;
- `dyrank-qlora`: dyrank's recipe (trainers/finetune.py), method qlora, rank 64;
- `dyrank-qdylora-slice` / `dyrank-qdylora-mask`: QDyLoRA r_max 64 (one rank sampled per step) with each
  `adapter.rank_application`.

Interleaving: the peer's training loop drives the run; a callback runs one step of every dyrank arm around each
peer step, the peer's position in the order rotating, so drift on a shared machine hits all arms alike. The
first `--warmup` steps are not timed. Checks that the arms are comparable (recorded, and the script stops if one
fails): trainable parameters equal, the tokens of every step equal, and the first step's loss (B = 0, so the
base's loss on that batch) equal across arms within bf16 rounding. Per-step training losses of every arm are kept
(the peer logs every step), so a reader sees that all of them train alike. Raw per-step times are kept in the JSON.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import REPO, TRAINING_LIBRARIES, peer_optimizer, parse, stamp, write_result

ARMS = {  # dyrank arm -> overrides of the adapter section
    "dyrank-qlora": ["adapter.method=qlora", "adapter.rank=64"],
    "dyrank-qdylora-slice": ["adapter.method=qdylora", "adapter.r_max=64", "adapter.rank_application=slice"],
    "dyrank-qdylora-mask": ["adapter.method=qdylora", "adapter.r_max=64", "adapter.rank_application=mask"],
}
SMOKE = ["model.source=tiny-llama", "data.dataset=tiny-qa", "data.max_seq_len=48", "training.batch_size=4"]


def job_config(config: str, steps: int, extra: list[str], arm: list[str]):
    from trainers.config import load_job_config

    shared = [f"training.max_steps={steps}", "training.checkpoint_every=100000", "training.gradient_checkpointing=true",
              "quantization.load_in_4bit=true"]
    return load_job_config(config, [*shared, *extra, *arm], ignore_sections=PIPELINE_SECTIONS)


PIPELINE_SECTIONS = ("selection", "baselines", "tracking", "resources")  # a pipeline YAML's non-job sections


def peer_trainer(job, recipe, steps: int, out: Path, callback, kind: str = "trainer"):
    """What a QLoRA user scripts: PEFT's k-bit preparation and LoRA, and a `Trainer` with the recipe's settings;
    or (kind "sft") TRL's `SFTTrainer` given the base and a `peft_config`, as TRL's QLoRA recipe does, with its own
    loss (TRL's fused lm_head and token metrics). Both see the recipe's token batches (SFT's dataset preparation
    is skipped: the rows are already tokenized with dyrank's prompt masking, so the tokens are equal)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    from trainers.batching import collate
    from trainers.models import load_base_model, quant_settings, resolve_compute_dtype

    a, t = job.adapter, job.training
    torch.manual_seed(t.seed)
    base = load_base_model(recipe.base_path, quant_settings(job), device=recipe.device)
    lora = LoraConfig(r=64, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none",
                      target_modules=a.target_modules, task_type="CAUSAL_LM")
    # The peer sees exactly the recipe's batches: step i's examples in step i's order, no shuffling.
    ordered = [recipe.train_examples[i] for step in range(steps) for i in recipe.schedule.indices(step)]
    tokens: list[int] = []

    def collate_and_count(features):
        batch = collate(features, recipe.tokenizer.pad_token_id)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    compute = resolve_compute_dtype(job.quantization.compute_dtype)
    settings = dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=t.batch_size, learning_rate=t.lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=math.ceil(t.warmup_ratio * steps),  # as the recipe: trainers/finetune.py
        max_grad_norm=t.max_grad_norm, weight_decay=t.weight_decay, optim=peer_optimizer(t.optimizer),
        bf16=compute == torch.bfloat16, fp16=compute == torch.float16,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,  # per-step losses, to check it trains as the other arms do
        save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, seed=t.seed, use_cpu=recipe.device.type == "cpu",
    )
    if kind == "sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        class OrderedSFTTrainer(SFTTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return SequentialSampler(self.train_dataset)

        args = SFTConfig(**settings, max_length=None, packing=False, shuffle_dataset=False,
                         dataset_kwargs={"skip_prepare_dataset": True})
        trainer = OrderedSFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(ordered),
                                    data_collator=collate_and_count, processing_class=recipe.tokenizer,
                                    peft_config=lora, callbacks=[callback])
        return trainer, tokens

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = OrderedTrainer(model=get_peft_model(base, lora), args=TrainingArguments(**settings),
                             train_dataset=ordered, data_collator=collate_and_count, callbacks=[callback])
    return trainer, tokens


def dyrank_recipes(config: str, steps: int, extra: list[str], scratch: Path, arms: list[str]) -> dict:
    """Each dyrank arm's training recipe, set up and in train mode."""
    from trainers.finetune import FinetuneRecipe

    recipes = {}
    for name in arms:
        recipes[name] = FinetuneRecipe(job_config(config, steps, extra, ARMS[name]), scratch / name, progress=False)
        recipes[name].setup()
        recipes[name].model.train()
    return recipes


def run(config: str, steps: int, warmup: int, extra: list[str], scratch: Path, arms: list[str],
        partial=None, peer: str = "trainer") -> dict:
    """The interleaved run; `partial(result_so_far)` is called every 10 steps, so a cut-short run keeps its data."""
    from transformers import TrainerCallback

    from trainers.batching import collate
    from trainers.methods.base import trainable_params

    recipes = dyrank_recipes(config, steps, extra, scratch, arms)
    first = recipes[arms[0]]
    times = {name: [] for name in ["peer", *arms]}
    losses = {name: [] for name in ["peer", *arms]}
    dyrank_tokens = [int(collate([first.train_examples[i] for i in first.schedule.indices(step)],
                                 first.tokenizer.pad_token_id)["attention_mask"].sum()) for step in range(steps)]

    def dyrank_steps(names: list[str], step: int) -> None:
        for name in names:
            begun = time.perf_counter()
            row = recipes[name].train_step(step)
            times[name].append(time.perf_counter() - begun)  # collate + step, as the recipe's loop pays it
            losses[name].append(row["train_loss"])

    class Interleave(TrainerCallback):
        """Runs the dyrank arms around each peer step; the peer's time is its whole cycle minus theirs."""

        def __init__(self):
            self.mark, self.inside = None, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step
            before = arms[: step % (len(arms) + 1)]  # rotate the peer's place in the order
            begun = time.perf_counter()
            dyrank_steps(before, step)
            self.inside += time.perf_counter() - begun

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            step = state.global_step - 1
            times["peer"].append(now - self.mark - self.inside)
            dyrank_steps(arms[step % (len(arms) + 1):], step)
            if partial and (step + 1) % 10 == 0 and step + 1 > warmup + 2:
                partial({"times": times, "losses": losses, "checks": {"steps_done": step + 1}})
            self.inside, self.mark = 0.0, time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses["peer"].append(logs["loss"])

    trainer, peer_tokens = peer_trainer(first.cfg, first, steps, scratch / "peer", Interleave(), peer)
    peer_params = trainable_params(trainer.model)
    trainer.train()

    checks = {
        "trainable_params": {"peer": peer_params, **{n: trainable_params(r.model) for n, r in recipes.items()}},
        "tokens_equal": peer_tokens[:steps] == dyrank_tokens,
        "tokens_per_step": dyrank_tokens,
        # step 1's loss: every B is still zero, so it is the base's loss on batch 0 under each arm's autocast
        "first_step_loss": {n: losses[n][0] for n in ["peer", *arms]},
    }
    if len(set(checks["trainable_params"].values())) != 1:
        raise SystemExit(f"arms train different parameter counts: {checks['trainable_params']}")
    if not checks["tokens_equal"]:
        raise SystemExit("the peer saw other tokens than dyrank's arms")
    spread_loss = max(checks["first_step_loss"].values()) / min(checks["first_step_loss"].values()) - 1
    if spread_loss > 0.02:
        raise SystemExit(f"first-step losses differ by {spread_loss:.1%}: {checks['first_step_loss']}")
    return {"times": times, "losses": losses, "checks": checks}


def run_without_peer(config: str, steps: int, warmup: int, extra: list[str], scratch: Path, arms: list[str],
                     partial=None) -> dict:
    """P1 only: the dyrank arms interleaved step by step, the first arm's place rotating, no peer (at 3 s a step
    a peer would add 40 % to a 200-step run and P1 does not use it)."""
    from trainers.methods.base import trainable_params

    recipes = dyrank_recipes(config, steps, extra, scratch, arms)
    times = {name: [] for name in arms}
    losses = {name: [] for name in arms}
    for step in range(steps):
        shift = step % len(arms)
        for name in arms[shift:] + arms[:shift]:
            begun = time.perf_counter()
            row = recipes[name].train_step(step)
            times[name].append(time.perf_counter() - begun)
            losses[name].append(row["train_loss"])
        if partial and (step + 1) % 10 == 0 and step + 1 > warmup + 2:
            partial({"times": times, "losses": losses, "checks": {"steps_done": step + 1}})
    checks = {"trainable_params": {n: trainable_params(r.model) for n, r in recipes.items()},
              "first_step_loss": {n: losses[n][0] for n in arms}}
    if len(set(checks["trainable_params"].values())) != 1:
        raise SystemExit(f"arms train different parameter counts: {checks['trainable_params']}")
    return {"times": times, "losses": losses, "checks": checks}


def op_counts(config: str, steps: int, extra: list[str], scratch: Path, arms: list[str], profiled: int = 3) -> dict:
    """Per dyrank arm, averaged over `profiled` steps after one warm-up step: operator calls (torch.profiler's
    CPU events) and matmul FLOPs per step. Slice and mask differ here: the mask runs QLoRA r_max's ops and FLOPs,
    slicing adds view/copy ops but does b/r_max of the LoRA FLOPs."""
    from torch.profiler import ProfilerActivity, profile

    from trainers.finetune import FinetuneRecipe

    rows = {}
    for name in arms:
        recipe = FinetuneRecipe(job_config(config, steps, extra, ARMS[name]), scratch / f"ops-{name}", progress=False)
        recipe.setup()
        recipe.model.train()
        recipe.train_step(0)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for step in range(1, 1 + profiled):
                recipe.train_step(step)
        events = prof.key_averages()
        top = sorted(events, key=lambda e: e.count, reverse=True)[:12]
        rows[name] = {"ops_per_step": sum(e.count for e in events) / profiled,
                      "matmul_gflops_per_step": sum(e.flops for e in events) / profiled / 1e9,
                      "top_ops_per_step": {e.key: e.count / profiled for e in top}}
        del recipe
    return rows


def paired_bootstrap(ratios: list[float], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the median of per-step paired ratios (step i of one arm ÷ step i of the peer)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(ratios)
    idx = torch.randint(0, len(values), (samples, len(values)), generator=g)
    medians = values[idx].median(dim=1).values.sort().values
    return float(medians[int(0.025 * samples)]), float(medians[int(0.975 * samples) - 1])


def summarise(result: dict, warmup: int) -> dict:
    times = {name: values[warmup:] for name, values in result["times"].items()}
    peer = times.get("peer", times["dyrank-qlora"])  # without a peer (--no-peer) ratios are to dyrank's QLoRA
    rows = {}
    for name, values in times.items():
        paired = [v / p for v, p in zip(values, peer)]
        low, high = paired_bootstrap(paired)
        rows[name] = {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
                      "n": len(values), "ratio_to_peer": statistics.median(values) / statistics.median(peer),
                      "paired_ratio_median": statistics.median(paired), "paired_ratio_ci95": [low, high]}
    for slice_or_mask in ("dyrank-qdylora-slice", "dyrank-qdylora-mask"):  # P1: QDyLoRA ÷ QLoRA r64, paired
        if slice_or_mask in times and "dyrank-qlora" in times:
            paired = [v / q for v, q in zip(times[slice_or_mask], times["dyrank-qlora"])]
            rows[slice_or_mask]["p1_ratio_to_dyrank_qlora"] = statistics.median(paired)
            rows[slice_or_mask]["p1_ci95"] = list(paired_bootstrap(paired))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "examples" / "smollm2-countries.yaml"))
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="extra", action="append", default=[])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: checks the script still runs")
    parser.add_argument("--op-counts", action="store_true", help="only profile the dyrank arms' operator counts")
    parser.add_argument("--peer", choices=["trainer", "sft"], default="trainer",
                        help="the peer arm: transformers Trainer + PEFT, or TRL's SFTTrainer with a peft_config")
    parser.add_argument("--no-peer", action="store_true", help="P1 only: the dyrank arms without the Trainer arm")
    parser.add_argument("--out", required=True)
    args = parse(parser)
    if args.smoke:
        args.extra, args.steps, args.warmup = [*SMOKE, *args.extra], 4, 1
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="dyrank-bench-g1-"))
    if args.op_counts:
        out = stamp("bench/g1_trainer_peer.py --op-counts", *TRAINING_LIBRARIES, config=Path(args.config).name,
                    threads=args.threads, overrides=args.extra, smoke=args.smoke)
        out["arms"] = op_counts(args.config, args.steps, args.extra, scratch, args.arms)
        write_result(out, args.out)
        for name, row in out["arms"].items():
            print(f"{name:<22} ops/step {row['ops_per_step']:>9.0f}  matmul GFLOP/step {row['matmul_gflops_per_step']:.1f}")
        return
    def save(result: dict, steps_done: int) -> dict:
        rows = summarise(result, args.warmup)
        script = "bench/g1_trainer_peer.py" + (" --no-peer" if args.no_peer else f" --peer {args.peer}")
        out = stamp(script, *TRAINING_LIBRARIES, config=Path(args.config).name, steps=steps_done,
                    planned_steps=args.steps, warmup=args.warmup, threads=args.threads, overrides=args.extra,
                    smoke=args.smoke)
        out.update(arms=rows, checks=result["checks"], raw_step_seconds=result["times"], train_losses=result["losses"])
        write_result(out, args.out)
        return rows

    if args.no_peer and "dyrank-qlora" not in args.arms:
        raise SystemExit("--no-peer: --arms must include dyrank-qlora (P1's reference)")
    if not args.no_peer:  # one line before any load when Trainer has no optimizer of the recipe's class
        peer_optimizer(job_config(args.config, args.steps, args.extra, []).training.optimizer)
    partial = lambda r: save(r, r["checks"]["steps_done"])  # noqa: E731
    if args.no_peer:
        measured = run_without_peer(args.config, args.steps, args.warmup, args.extra, scratch, args.arms, partial)
    else:
        measured = run(args.config, args.steps, args.warmup, args.extra, scratch, args.arms, partial, args.peer)
    rows = save(measured, args.steps)
    print(f"{'arm':<22}{'median s':>10}{'÷ qlora' if args.no_peer else '÷ peer':>8}{'paired 95% CI':>18}")
    for name, r in rows.items():
        low, high = r["paired_ratio_ci95"]
        print(f"{name:<22}{r['median_s']:>10.3f}{r['paired_ratio_median']:>8.3f}   [{low:.3f}, {high:.3f}]")


if __name__ == "__main__":
    main()
