"""bitlora's options: how the LoRA factors are quantized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainers.config_base import Section


class BitLoraOptions(Section):
    bits: Literal["1", "1.58"] = Field(
        "1.58", description="1: binary factors sign(W - mean W) * mean|W|; 1.58: ternary RoundClip(W / mean|W|, -1, 1) * mean|W|."
    )
