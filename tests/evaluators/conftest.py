"""One short QDyLoRA training run on the tiny preset, shared by every evaluator test in the session.

Quantization is off so the comparisons can be tight (fp32 end to end). The preset base lives in the
test cache that tests/conftest.py sets up, so it is built once and reused across test runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_job
from trainers.batching import encode_all
from trainers.datasets.splits import load_splits
from trainers.finetune import train
from trainers.models import load_tokenizer, resolve_base

EVAL_SAMPLES = 32


@dataclass
class TinyRun:
    cfg: object
    base_path: Path
    adapter_dir: Path
    tokenizer: object
    records: list[dict]   # validation records (raw)
    examples: list[dict]  # the same, encoded


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    cfg = tiny_job("quantization.load_in_4bit=false", "training.max_steps=20", "training.gradient_checkpointing=false")
    result = train(cfg, tmp_path_factory.mktemp("tiny-run"), progress=False)
    base_path = resolve_base(cfg.model.source)
    tokenizer = load_tokenizer(base_path)
    records = load_splits(cfg.data)["validation"][:EVAL_SAMPLES]
    examples = encode_all(records, tokenizer, cfg.data.max_seq_len)  # never packed for evaluation
    return TinyRun(cfg, base_path, result.adapter_dir, tokenizer, records, examples)
