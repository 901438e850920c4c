"""Wiring qlora-svd onto saved adapters: a trained QLoRA adapter folder becomes a rank-dynamic one whose factors
are in singular-value order and whose meta fixes the scale at alpha / r_max. Used when the method saves its own
training, and on the grid's QLoRA r_max adapter when a pipeline already trained one (no second training)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig
from safetensors.torch import load_file, save_file

from trainers.adapters import ADAPTER_WEIGHTS
from trainers.methods.base import ADAPTER_META, read_adapter_meta, write_adapter_meta
from trainers.methods.qlora_svd.layer import svd_ordered_factors


def svd_order_weights(weights: dict) -> dict:
    """Each layer's lora_A / lora_B pair replaced by its singular-value-ordered factors; other tensors kept."""
    out = dict(weights)
    for key in weights:
        if ".lora_A." in key:
            key_b = key.replace(".lora_A.", ".lora_B.")
            if key_b not in weights:
                raise ValueError(f"{key} has no matching {key_b}")
            out[key], out[key_b] = svd_ordered_factors(weights[key], weights[key_b])
    return out


def svd_order_adapter(adapter_dir: str | Path, out_dir: str | Path | None = None, r_min: int = 1) -> Path:
    """Rewrite the QLoRA adapter in `adapter_dir` (into `out_dir`, default in place) as a qlora-svd adapter that
    serves ranks r_min..r (r its trained rank) as prefixes scaled by alpha / r."""
    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir) if out_dir is not None else adapter_dir
    config = LoraConfig.from_pretrained(adapter_dir)
    if config.rank_pattern or config.alpha_pattern or config.use_rslora or config.use_dora:
        raise ValueError(f"{adapter_dir}: qlora-svd needs one plain rank and alpha for every layer")
    if not 1 <= r_min <= config.r:
        raise ValueError(f"r_min {r_min} is outside 1..{config.r}")
    weights = svd_order_weights(load_file(adapter_dir / ADAPTER_WEIGHTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir != adapter_dir:
        for path in adapter_dir.iterdir():
            if path.is_file() and path.name not in (ADAPTER_WEIGHTS, ADAPTER_META):
                (out_dir / path.name).write_bytes(path.read_bytes())
    save_file(weights, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    meta = read_adapter_meta(adapter_dir) or {}
    write_adapter_meta(out_dir, {**meta, "method": "qlora-svd", "dynamic": True, "r_min": r_min, "r_max": config.r,
                                 "lora_alpha": config.lora_alpha, "scaling": "alpha/r_max"})
    return out_dir
