"""1-bit and 1.58-bit (ternary) LoRA: BitNet-style quantized factors on PEFT's LoRA layers."""

from trainers.bitlora.layer import BitFactor, binarize, ternarize
from trainers.bitlora.model import BitLoraMethod, attach_bit_factors, quantize_adapter_file

__all__ = ["BitFactor", "BitLoraMethod", "attach_bit_factors", "binarize", "quantize_adapter_file", "ternarize"]
