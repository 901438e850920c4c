"""What the evaluation benchmarks (multirank_eval.py, p3_eval_arms.py) share: a job config from a YAML
(`--smoke`: examples/tiny.yaml, the tiny random preset, seconds on a CPU), a trained-looking dynamic adapter
of that config saved to a folder, so every arm scores the same adapter through real code paths, and the loss a
user computes with plain transformers (hf_loss)."""

from __future__ import annotations

from pathlib import Path

import torch

from _common import REPO, randomize_lora_b

from trainers.adapters import attach_lora  # noqa: E402
from trainers.batching import IGNORE_INDEX, eval_batches  # noqa: E402
from trainers.config import JobConfig, load_job_config  # noqa: E402
from trainers.methods.base import write_adapter_meta  # noqa: E402
from trainers.models import base_dtype, load_base_model, quant_settings, resolve_base  # noqa: E402

PIPELINE_SECTIONS = ("selection", "baselines", "tracking", "resources")
SMOKE_CONFIG = REPO / "examples" / "tiny.yaml"
SMOKE_OVERRIDES = ["evaluation.max_samples=16", "evaluation.batch_size=8"]
# lora_B's spread: large enough on the tiny preset that neighbouring ranks' losses differ by far more than the
# arms' rounding, so a wrong rank in any arm shows; small on a real base, where it stands for a trained adapter.
B_STD = {"smoke": 0.2, "real": 0.02}


def add_config_arguments(parser, default_config: str) -> None:
    parser.add_argument("--config", default=default_config, help="a dyrank YAML (pipeline sections are ignored)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--smoke", action="store_true", help="examples/tiny.yaml on the tiny random preset: seconds")


def b_std(args) -> float:
    return B_STD["smoke" if args.smoke else "real"]


def job_from_arguments(args) -> JobConfig:
    config, overrides = (SMOKE_CONFIG, SMOKE_OVERRIDES + args.set) if args.smoke else (args.config, args.set)
    return load_job_config(config, overrides, ignore_sections=PIPELINE_SECTIONS)


def save_dynamic_adapter(cfg: JobConfig, folder: Path, b_std: float = 0.02) -> Path:
    """A rank-r_max QDyLoRA adapter on cfg's base, lora_B drawn at random (PEFT starts it at zero, which would
    make every rank the same model), saved as training saves one."""
    torch.manual_seed(0)
    base = load_base_model(resolve_base(cfg.model.source), quant_settings(cfg), base_dtype(cfg))
    a = cfg.adapter
    model = attach_lora(base, rank=a.r_max, alpha=a.alpha, dropout=0.0, target_modules=a.target_modules,
                        dynamic=True, gradient_checkpointing=False)
    randomize_lora_b(model, b_std)
    model.save_pretrained(folder)
    write_adapter_meta(folder, {"method": "qdylora", "dynamic": True, "r_min": a.r_min, "r_max": a.r_max,
                                "lora_alpha": a.alpha})
    return folder


@torch.inference_mode()
def hf_loss(model, examples: list[dict], pad_id: int, batch_size: int) -> float:
    """Token-weighted completion loss the way a user gets it: HF's own `labels=` loss (full logits)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in eval_batches(examples, batch_size, pad_id):
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        total, tokens = total + float(loss) * n, tokens + n
    return total / tokens
