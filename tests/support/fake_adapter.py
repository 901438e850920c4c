"""A small QDyLoRA adapter folder written by hand (numpy + safetensors + JSON, no training): what export and the
bad-input table read. Rank 4 on two projections of the tiny model's first layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

PREFIX = "base_model.model.model.layers.0.self_attn."


def write_adapter(folder: Path, r_max: int = 4, broken: dict[str, bytes] | None = None) -> Path:
    """The adapter in `folder` (created), with `broken` files written over the good ones."""
    folder.mkdir(parents=True)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.arange(r_max * 64, dtype=np.float32).reshape(r_max, 64)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.arange(64 * r_max, dtype=np.float32).reshape(64, r_max)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r_max, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": None}))
    (folder / "dyrank_adapter.json").write_text(json.dumps(
        {"method": "qdylora", "dynamic": True, "r_min": 1, "r_max": r_max, "lora_alpha": 16}))
    for name, data in (broken or {}).items():
        (folder / name).write_bytes(data)
    return folder
