"""Every training method `dyrank` compares, and what each one supports.

`METHODS` is the one table the config validates against (`dyrank check` names the method and the
option it does not support) and the recipe dispatches on: `get_method(name)` returns the object whose
few verbs (`attach`, `build_optimizer`, `after_optimizer_step`, `save`) the recipe in trainers/finetune.py
calls, the same for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodSpec:
    summary: str
    base: Literal["4bit", "16bit", "config"]  # config: whatever quantization.load_in_4bit says
    sweeps: bool  # one trained adapter is scored at many ranks
    adapter: bool  # saves an adapter for a frozen base; False: saves the full trained weights


METHODS: dict[str, MethodSpec] = {
    "qdylora": MethodSpec("DyLoRA on the 4-bit base: one adapter, every rank r_min..r_max usable", "config", True, True),
    "dylora": MethodSpec("DyLoRA on a 16-bit base (the qdylora code with quantization off)", "16bit", True, True),
    "qlora": MethodSpec("fixed-rank LoRA on the 4-bit base (QLoRA)", "config", False, True),
    "lora": MethodSpec("fixed-rank LoRA on a 16-bit base (PEFT)", "16bit", False, True),
    "adalora": MethodSpec("PEFT's AdaLoRA: SVD adapters whose rank budget is pruned from adalora.init_r down to rank",
                          "16bit", False, True),
    "bitlora": MethodSpec("1-bit or 1.58-bit (ternary) LoRA factors, BitNet-style, trained with a straight-through "
                          "estimator on the 4-bit base", "config", False, True),
    "galore": MethodSpec("full-parameter training with GaLore's low-rank gradient projection (galore-torch AdamW)",
                         "16bit", False, False),
    "galore8bit": MethodSpec("GaLore with an 8-bit AdamW (galore-torch's on CUDA; its projector with bitsandbytes' "
                             "8-bit AdamW on the CPU)", "16bit", False, False),
}
MethodName = Literal["qdylora", "dylora", "qlora", "lora", "adalora", "bitlora", "galore", "galore8bit"]
LORA_FAMILY = ("qdylora", "dylora", "qlora", "lora")


def get_method(name: str):
    """The object that trains `name`: its attach / optimizer / step hook / save verbs."""
    if name in LORA_FAMILY:
        from trainers.methods.lora import LoraMethod

        return LoraMethod(name)
    if name == "adalora":
        from trainers.methods.adalora import AdaLoraMethod

        return AdaLoraMethod()
    if name == "bitlora":
        from trainers.bitlora import BitLoraMethod

        return BitLoraMethod()
    if name in ("galore", "galore8bit"):
        from trainers.methods.galore import GaloreMethod

        return GaloreMethod(eight_bit=name == "galore8bit")
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
