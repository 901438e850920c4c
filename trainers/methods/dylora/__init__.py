"""DyLoRA: every rank r_min..r_max from one adapter on a 16-bit base; QDyLoRA's code with quantization off."""

from trainers.methods import MethodSpec, register_method

register_method(MethodSpec(
    name="dylora", label="DyLoRA", trainer="trainers.methods.qdylora.method:DynamicLoraMethod", base="16bit",
    rank_dynamic=True, summary="DyLoRA on a 16-bit base (the qdylora code with quantization off)",
))
