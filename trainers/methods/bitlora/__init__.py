"""1-bit and 1.58-bit (ternary) LoRA: BitNet-style quantized factors on PEFT's LoRA layers (layer.py: the
quantizers and the straight-through factor; method.py: attach, train, export quantized factors)."""

from trainers.methods import MethodSpec, register_method
from trainers.methods.bitlora.config import BitLoraOptions

register_method(MethodSpec(
    name="bitlora", label="BitLoRA", trainer="trainers.methods.bitlora.method:BitLoraMethod", base="config",
    options_key="bitlora", options=BitLoraOptions,
    summary="1-bit or 1.58-bit (ternary) LoRA factors, BitNet-style, trained with a straight-through estimator "
            "on the 4-bit base",
))
