"""What the benchmark scripts share: model shapes (random weights, built from a config), timing helpers,
random evaluation examples, and the header every results JSON carries. Imports only torch and transformers,
so it runs on the bare GPU box."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
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


class Pad:
    """The one tokenizer attribute evaluate() needs when examples are already token ids."""
    pad_token_id = 0


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


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


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
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def random_examples(n: int, seq: int, vocab: int = 384, seed: int = 0) -> list[dict]:
    """Encoded examples whose second half is the scored completion."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (seq,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (seq // 2) + ids[seq // 2:]})
    return examples


def header(script: str, shape: str) -> dict:
    import peft
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"{platform.machine()}, {os.cpu_count()} cores, no GPU")
    return {"script": script, "date": time.strftime("%Y-%m-%d"), "shape": shape, "device": device,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                         "bitsandbytes": bnb}}
