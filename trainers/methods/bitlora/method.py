"""Wiring 1-bit / 1.58-bit LoRA into PEFT: attach, train with quantized factors, export quantized factors.

The export is a standard PEFT LoRA adapter whose A and B hold the quantized values (2 or 3 distinct
values per tensor, times one scale), so plain PEFT loads it and `merge_and_unload` folds it into the base.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from trainers.adapters import ADAPTER_WEIGHTS, lora_layers
from trainers.methods.bitlora.layer import QUANTIZERS, BitFactor
from trainers.methods.qlora.method import LoraMethod


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


class BitLoraMethod(LoraMethod):
    """QLoRA's LoRA whose factors run quantized; the export holds the quantized values."""

    def attach(self, base, job):
        model = super().attach(base, job)
        attach_bit_factors(model, job.adapter.bitlora.bits)
        return model

    def save(self, model, job, out_dir: Path) -> Path:
        super().save(model, job, out_dir)
        quantize_adapter_file(out_dir, job.adapter.bitlora.bits)
        return out_dir
