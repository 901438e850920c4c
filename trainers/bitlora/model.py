"""Wiring 1-bit / 1.58-bit LoRA into PEFT: attach, train with quantized factors, export quantized factors.

The export is a standard PEFT LoRA adapter whose A and B hold the quantized values (2 or 3 distinct
values per tensor, times one scale), so plain PEFT loads it and `merge_and_unload` folds it into the base.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from trainers.adapters import attach_lora
from trainers.bitlora.layer import QUANTIZERS, BitFactor
from trainers.methods.base import Method
from trainers.qdylora.model import ADAPTER_WEIGHTS, lora_layers, write_dynamic_meta


def attach_bit_factors(model, bits: str, adapter: str = "default") -> int:
    count = 0
    for layer in lora_layers(model, adapter):
        for factors in (layer.lora_A, layer.lora_B):
            if not isinstance(factors[adapter], BitFactor):
                factors[adapter] = BitFactor(factors[adapter], bits)
        count += 1
    if count == 0:
        raise ValueError("the model has no LoRA layers to quantize")
    return count


def quantize_adapter_file(adapter_dir: Path, bits: str) -> Path:
    """Replace the latent factors in a saved adapter by their quantized values."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    quantize = QUANTIZERS[bits]
    weights = {k: (quantize(v.float()).to(v.dtype) if (".lora_A." in k or ".lora_B." in k) else v)
               for k, v in load_file(path).items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, path, metadata={"format": "pt"})
    return path


class BitLoraMethod(Method):
    name = "bitlora"

    def attach(self, base, cfg):
        a = cfg.adapter
        model = attach_lora(base, rank=a.rank, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules,
                            dynamic=False, gradient_checkpointing=cfg.training.gradient_checkpointing)
        attach_bit_factors(model, a.bitlora.bits)
        return model

    def save(self, model, cfg, out_dir: Path) -> Path:
        a = cfg.adapter
        model.save_pretrained(out_dir, safe_serialization=True)
        quantize_adapter_file(out_dir, a.bitlora.bits)
        write_dynamic_meta(out_dir, a.rank, a.rank, a.alpha, self.name)
        return out_dir
