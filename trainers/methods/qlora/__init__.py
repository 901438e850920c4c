"""QLoRA: fixed-rank LoRA on the 4-bit NF4 base (NF4, double quantization, paged AdamW)."""

from trainers.methods import MethodSpec, register_method

register_method(MethodSpec(
    name="qlora", label="QLoRA", trainer="trainers.methods.qlora.method:LoraMethod", base="config",
    summary="fixed-rank LoRA on the 4-bit base (QLoRA)",
))
