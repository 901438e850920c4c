"""LoRA: fixed-rank LoRA on a 16-bit base (PEFT); QLoRA's code with quantization off."""

from trainers.methods import MethodSpec, register_method

register_method(MethodSpec(
    name="lora", label="LoRA", trainer="trainers.methods.qlora.method:LoraMethod", base="16bit",
    summary="fixed-rank LoRA on a 16-bit base (PEFT)",
))
