"""A loadable model folder with a known shape and seeded random weights, for benchmarks on a machine that
cannot hold the real checkpoint (the GPU box takes 64 MiB a call; SmolLM2's weights are 538 MB).

    python3 bench/random_base.py smollm2 /tmp/smollm2-random --tokenizer .device/smollm2-tokenizer

Step time and memory depend on the shape, not the values; eval losses of such a model mean nothing.
The tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja) are copied in when given,
so configs and data sets that tokenize text run unchanged against the folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import LLAMA_7B, SMOLLM2_135M, TINY, save_random_base

SHAPES = {"smollm2": SMOLLM2_135M, "llama7b": LLAMA_7B, "tiny": TINY}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--tokenizer", help="a folder holding the tokenizer files to copy in")
    args = parser.parse_args()
    out = save_random_base(SHAPES[args.shape], Path(args.out))
    if args.tokenizer:
        copied = [f for f in TOKENIZER_FILES if (Path(args.tokenizer) / f).is_file()]
        if "tokenizer.json" not in copied:
            raise SystemExit(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
        for name in copied:
            shutil.copy(Path(args.tokenizer) / name, out / name)
    print(out)


if __name__ == "__main__":
    main()
