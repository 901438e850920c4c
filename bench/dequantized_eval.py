"""One eval pass of SmolLM2-135M-Instruct on its NF4 base against the same base dequantized once (the
evaluators' `evaluation.dequantize_base`), side by side on the countries validation split.

    .venv/bin/python bench/dequantized_eval.py --repeats 7

Fetches the model (`dyrank models fetch`) and builds the data set (`dyrank data build countries`) into
the cache if they are not there. Interleaved repeats; medians with min-max; the loss difference shows
the two score the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluators.metrics import evaluate  # noqa: E402
from trainers.batching import encode_all  # noqa: E402
from trainers.datasets.splits import read_jsonl  # noqa: E402
from trainers.datasets import split_files  # noqa: E402
from trainers.models import QuantSettings, dequantize_once, load_base_model, load_tokenizer, resolve_base  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base = resolve_base("smollm2-135m-instruct")
    tokenizer = load_tokenizer(base)
    records = read_jsonl(split_files("countries")["validation"])[: args.examples]
    examples = encode_all(records, tokenizer, max_seq_len=128)
    models = {"nf4": load_base_model(base, QuantSettings()).eval(),
              "dequantized": dequantize_once(load_base_model(base, QuantSettings())).eval()}
    times, losses = {k: [] for k in models}, {}
    for rep in range(args.repeats + 1):  # the first round warms up and is not timed
        for name in (("nf4", "dequantized") if rep % 2 == 0 else ("dequantized", "nf4")):
            start = time.perf_counter()
            losses[name] = evaluate(models[name], examples, tokenizer, batch_size=16)["eval_loss"]
            if rep:
                times[name].append(time.perf_counter() - start)
    spread = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in times.items()}
    out = {"script": "bench/dequantized_eval.py", "date": str(date.today()),
           "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU only",
           "versions": {"torch": torch.__version__}, "examples": len(examples), "seconds": spread, "loss": losses,
           "relative_loss_difference": abs(losses["nf4"] - losses["dequantized"]) / losses["nf4"],
           "ratio_dequantized_over_nf4": spread["dequantized"]["median"] / spread["nf4"]["median"]}
    (REPO / "bench" / "results" / "dequantized_eval.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
