"""AdaLoRA (PEFT): SVD-shaped adapters whose rank budget is pruned from adalora.init_r down to rank."""

from trainers.methods import MethodSpec, register_method
from trainers.methods.adalora.config import AdaLoraOptions, check_adapter, check_job

register_method(MethodSpec(
    name="adalora", label="AdaLoRA", trainer="trainers.methods.adalora.method:AdaLoraMethod", base="16bit",
    options_key="adalora", options=AdaLoraOptions, check_adapter=check_adapter, check_job=check_job,
    summary="PEFT's AdaLoRA: SVD adapters whose rank budget is pruned from adalora.init_r down to rank",
))
