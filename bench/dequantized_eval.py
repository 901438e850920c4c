"""One eval pass of SmolLM2-135M-Instruct on its NF4 base against the same base dequantized once (the
evaluators' `evaluation.dequantize_base`), side by side on the countries validation split.

    .venv/bin/python bench/dequantized_eval.py --repeats 7
    .venv/bin/python bench/dequantized_eval.py --smoke --out /tmp/deq.json     # tiny preset and tiny-qa (seconds)

Fetches the model (`dyrank models fetch`) and builds the data set (`dyrank data build countries`) into
the cache if they are not there. Interleaved repeats; medians with min-max; the loss difference shows
the two score the same weights.
"""

from __future__ import annotations

import json
import os

import torch

from _common import RESULTS, parse, parser, spread, stamp, timed, write_result

from evaluators.metrics import evaluate  # noqa: E402
from trainers.batching import encode_all  # noqa: E402
from trainers.datasets.splits import PACKAGED_DATASETS, read_jsonl  # noqa: E402
from trainers.datasets import split_files  # noqa: E402
from trainers.models import QuantSettings, dequantize_once, load_base_model, load_tokenizer, resolve_base  # noqa: E402


def main() -> None:
    arguments = parser(smoke="the tiny preset on tiny-qa, 1 repeat: a smoke test of this script",
                       out=RESULTS / "dequantized_eval.json")
    arguments.add_argument("--repeats", type=int, default=7)
    arguments.add_argument("--examples", type=int, default=64)
    args = parse(arguments)
    torch.set_num_threads(os.cpu_count() or 1)
    model_name, data_name = ("tiny-llama", "tiny-qa") if args.smoke else ("smollm2-135m-instruct", "countries")
    if args.smoke:
        args.repeats, args.examples = 1, 8
    base = resolve_base(model_name)
    tokenizer = load_tokenizer(base)
    path = PACKAGED_DATASETS[data_name] if args.smoke else split_files(data_name)["validation"]
    records = read_jsonl(path)[: args.examples]
    examples = encode_all(records, tokenizer, max_seq_len=128)
    models = {"nf4": load_base_model(base, QuantSettings()).eval(),
              "dequantized": dequantize_once(load_base_model(base, QuantSettings())).eval()}
    times, losses = {k: [] for k in models}, {}
    for rep in range(args.repeats + 1):  # the first round warms up and is not timed
        for name in (("nf4", "dequantized") if rep % 2 == 0 else ("dequantized", "nf4")):
            losses[name], seconds = timed(lambda: evaluate(models[name], examples, tokenizer, batch_size=16)["eval_loss"])
            if rep:
                times[name].append(seconds)
    seconds = {k: spread(v) for k, v in times.items()}
    out = stamp("bench/dequantized_eval.py", "torch")
    out.update(model=model_name, data=data_name, examples=len(examples), seconds=seconds, loss=losses,
               relative_loss_difference=abs(losses["nf4"] - losses["dequantized"]) / losses["nf4"],
               ratio_dequantized_over_nf4=seconds["dequantized"]["median"] / seconds["nf4"]["median"])
    write_result(out, args.out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
