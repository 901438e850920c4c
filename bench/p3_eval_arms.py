"""P3: scoring every rank of one QDyLoRA adapter, dyrank's evaluator against what a user would script.

    python3 bench/p3_eval_arms.py --out bench/results/p3_eval_arms.json                  # SmolLM2 + countries
    python3 bench/p3_eval_arms.py --set model.source=/tmp/smollm2-random ... --out ...   # a random base (GPU box)
    python3 bench/p3_eval_arms.py --smoke --out /tmp/p3-smoke.json                        # tiny preset, seconds

Arms, over the same ranks, examples and adapter, interleaved repeats:
  ours    EvalSession as the evaluators run it: one base load (dequantized once), the adapter attached, every
          rank scored evaluation.ranks_per_forward at a time, completion-only loss
  naive   per rank: `dyrank export` (trainers/export.py), a fresh NF4 base, PeftModel.from_pretrained, HF's loss
  savvy   the PEFT-savvy user: the NF4 base loaded once; per rank export, load_adapter, set_adapter, HF's loss,
          delete_adapter
  floor   one plain forward per rank (HF's loss) on the dequantized base alone, its load not counted: what
          batching ranks must beat
Ratios (the issue's goals on a GPU): ours / naive <= 0.3, ours / savvy <= 0.8 (both loads included), ours'
scoring / floor <= 1.0. On a CPU the same ratios are reported; the losses of every arm must agree.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from peft import PeftModel

from _common import free_cuda_cache, parser, spread, stamp, timed, write_result
from _eval_bench import add_config_arguments, b_std, hf_loss, job_from_arguments, save_dynamic_adapter

from evaluators.session import EvalSession  # noqa: E402
from trainers.export import export_adapter  # noqa: E402
from trainers.models import base_dtype, load_base_model, quant_settings, resolve_base  # noqa: E402

RANKS = [1, 2, 4, 8, 16, 32, 48, 64]


def main() -> None:
    arguments = parser()
    add_config_arguments(arguments, "examples/smollm2-countries.yaml")
    arguments.add_argument("--repeats", type=int, default=3)
    args = arguments.parse_args()
    cfg = job_from_arguments(args)
    repeats = 1 if args.smoke else args.repeats
    ranks = [r for r in RANKS if r <= cfg.adapter.r_max]
    base_path, quant, dtype = resolve_base(cfg.model.source), quant_settings(cfg), base_dtype(cfg)
    scratch = tempfile.TemporaryDirectory(prefix="p3-")
    work = Path(scratch.name)
    adapter = save_dynamic_adapter(cfg, work / "adapter", b_std(args))
    reference = EvalSession(cfg)  # the examples every arm scores, and the dequantized base for the floor
    examples, pad_id, batch = reference.examples["validation"], reference.tokenizer.pad_token_id, cfg.evaluation.batch_size
    floor_model = reference.base
    scoring_seconds = []

    def ours() -> dict[int, float]:
        session = EvalSession(cfg)
        session.attach_adapter_dir(adapter)
        started = time.perf_counter()
        losses = {s.rank: s.metrics["eval_loss"] for s in session.score_ranks("validation", ranks)}
        scoring_seconds.append(time.perf_counter() - started)
        return losses

    def naive() -> dict[int, float]:
        losses = {}
        for r in ranks:
            exported = export_adapter(adapter, r, work / f"naive-r{r}", force=True)
            model = PeftModel.from_pretrained(load_base_model(base_path, quant, dtype), str(exported)).eval()
            losses[r] = hf_loss(model, examples, pad_id, batch)
            del model
            free_cuda_cache()
        return losses

    def savvy() -> dict[int, float]:
        losses, model = {}, None
        for r in ranks:
            exported = str(export_adapter(adapter, r, work / f"savvy-r{r}", force=True))
            if model is None:
                model = PeftModel.from_pretrained(load_base_model(base_path, quant, dtype), exported,
                                                  adapter_name=f"r{r}").eval()
            else:
                model.load_adapter(exported, adapter_name=f"r{r}")
                model.set_adapter(f"r{r}")
                model.delete_adapter(previous)
            previous = f"r{r}"
            losses[r] = hf_loss(model, examples, pad_id, batch)
        return losses

    def floor() -> dict[int, float]:
        return {r: hf_loss(floor_model, examples, pad_id, batch) for r in ranks}

    arms = {"ours": ours, "naive": naive, "savvy": savvy, "floor": floor}
    times, losses = {name: [] for name in arms}, {}
    warmup = 0 if args.smoke else 1  # round 0 warms up (caches, first-call kernels); a smoke run only checks
    for rep in range(repeats + warmup):
        for name in arms if rep % 2 == 0 else list(reversed(arms)):
            losses[name], seconds = timed(arms[name])
            if rep >= warmup:
                times[name].append(seconds)
    med = {name: statistics.median(v) for name, v in times.items()}
    ours_scoring = statistics.median(scoring_seconds[-repeats:])
    result = stamp("bench/p3_eval_arms.py", "torch", "transformers", "peft", "bitsandbytes", config=str(args.config),
                   smoke=args.smoke, model=cfg.model.source, ranks=ranks, examples=len(examples), batch_size=batch,
                   ranks_per_forward=reference.ranks_per_forward(), device=str(next(floor_model.parameters()).device))
    result.update(
        seconds={name: spread(v) for name, v in times.items()}, ours_scoring_seconds=ours_scoring,
        ratio_ours_over_naive=med["ours"] / med["naive"], ratio_ours_over_savvy=med["ours"] / med["savvy"],
        ratio_ours_scoring_over_floor=ours_scoring / med["floor"],
        max_relative_loss_difference={name: max(abs(losses[name][r] - losses["naive"][r]) / losses["naive"][r]
                                                for r in ranks) for name in ("ours", "savvy")},
        losses=losses)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("ratio", "max_relative"))}), flush=True)
    write_result(result, args.out)
    scratch.cleanup()


if __name__ == "__main__":
    main()
