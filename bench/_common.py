"""What the benchmark scripts share: model shapes (random weights, built from a config), timing helpers,
random evaluation examples and adapters, the header every results JSON carries, its writing, and the
`--out` / `--tiny` arguments. Imports only torch and transformers, so it runs on the bare GPU box.

Importing it also puts the project on sys.path, so a script run as `python bench/NAME.py` imports it."""

from __future__ import annotations

import argparse
import importlib
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

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                tie_word_embeddings=False, rms_norm_eps=1e-5)
TINY = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
# dyrank's optimizer names -> transformers Trainer's for the same class (bitsandbytes' paged AdamW, or torch's):
# the peer arms (G1, G2's user grid) train with the optimizer the dyrank config names
PEER_OPTIMIZERS = {"paged_adamw_32bit": "paged_adamw_32bit", "paged_adamw_8bit": "paged_adamw_8bit",
                   "adamw_torch": "adamw_torch"}
# examples/tiny.yaml cut to what still runs every part of a pipeline (training, sweep, selection, a baseline,
# test scores) in seconds: the smoke runs of the pipeline benchmarks
SMOKE_PIPELINE = ["training.max_steps=2", "evaluation.ranks=[1,2]", "baselines.ranks=[2]", "evaluation.max_samples=8",
                  "evaluation.bootstrap_samples=10"]


class Pad:
    """The one tokenizer attribute evaluate() needs when examples are already token ids."""
    pad_token_id = 0


def peer_optimizer(name: str) -> str:
    """Trainer's name for dyrank's training.optimizer, or a one-line exit where Trainer has none to compare with."""
    if name not in PEER_OPTIMIZERS:
        sys.exit(f"training.optimizer={name}: transformers Trainer has no optimizer of the same class; "
                 f"the peer arm takes one of {sorted(PEER_OPTIMIZERS)}")
    return PEER_OPTIMIZERS[name]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """(result, seconds) of fn(), with the device synchronised on both sides."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def free_cuda_cache() -> None:
    """Hand the allocator's cached blocks back, so the next model's load and peak start from a clean GPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lm_step(model, optimizer, ids, clip: float | None = 0.3) -> None:
    """One optimizer step of next-token loss on `ids` (inputs and labels), gradients clipped at `clip` as the
    training recipe does (None: not clipped)."""
    model(input_ids=ids, labels=ids).loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def spread(values: list[float], count: bool = True) -> dict:
    """Median, min and max of repeated measurements (and how many, unless `count` is off)."""
    row = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {**row, "n": len(values)} if count else row


def save_random_base(shape: dict, folder: Path) -> Path:
    """A Llama of `shape` with seeded random bf16 weights, saved as a loadable folder (built on the GPU when
    there is one: a 7B shape initialises in seconds there, minutes on the CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # never materialise an fp32 copy of a 7B model
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**shape))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    del model
    free_cuda_cache()
    return folder


def random_examples(n: int, seq: int, vocab: int = 384, seed: int = 0) -> list[dict]:
    """Encoded examples whose second half is the scored completion."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (seq,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (seq // 2) + ids[seq // 2:]})
    return examples


def randomize_lora_b(model, std: float) -> None:
    """Make an adapter look trained: PEFT starts every lora_B at zero, which would make all ranks the same model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


TRAINING_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes")


def versions(*libraries: str) -> dict:
    """{library: version}, None for one that is not installed (bitsandbytes is missing on some CPU boxes)."""
    found = {}
    for name in libraries:
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            found[name] = None
    return found


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {gpu}"


def stamp(script: str, *libraries: str, **fields) -> dict:
    """The opening of a results JSON for a script measured on this machine: what ran, when, where, with what."""
    return {"script": script, "date": date.today().isoformat(), **fields, "machine": machine(),
            "versions": versions(*libraries)}


def header(script: str, shape: str) -> dict:
    """The opening of a results JSON for a random-weights model of `shape` (the GPU scripts)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else machine()
    return {"script": script, "date": date.today().isoformat(), "shape": shape, "device": device,
            "versions": versions(*TRAINING_LIBRARIES)}


def write_result(result: dict, out: str | Path) -> None:
    """The results JSON at `out`, its folder created; rewritten whole, so a reader never sees half of it."""
    out, part = Path(out), Path(str(out) + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(json.dumps(result, indent=2))
    part.replace(out)


def tiny_or_smollm2(tiny: bool) -> tuple[dict, str]:
    """The model shape `--tiny` selects and its name for the results header."""
    return (TINY, "tiny") if tiny else (SMOLLM2_135M, "SmolLM2-135M")


RESULTS = REPO / "bench" / "results"


def parser(tiny: str | None = None, smoke: str | None = None, out: Path | None = None) -> argparse.ArgumentParser:
    """The arguments the scripts share: `--out` (required unless given a default) and, given its help, `--smoke`:
    a tiny model built from a config, seconds on a CPU, the check tests/bench/test_bench_smoke.py runs so a
    rename breaks a test rather than a figure. `tiny=` is the older spelling (`--tiny`, read as args.tiny)."""
    parser = argparse.ArgumentParser()
    if smoke:
        parser.add_argument("--smoke", action="store_true", help=smoke)
    if tiny:
        parser.add_argument("--tiny", "--smoke", dest="tiny", action="store_true", help=tiny)
    parser.add_argument("--out", required=out is None, default=out)
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments; a smoke run's JSON must go to a temp path, never over a kept result in bench/results/."""
    args = parser.parse_args()
    smoke = getattr(args, "smoke", False) or getattr(args, "tiny", False)
    if smoke and Path(args.out).resolve().is_relative_to(RESULTS):
        parser.error(f"--out {args.out}: a smoke run writes outside bench/results/ (a temp path)")
    return args
