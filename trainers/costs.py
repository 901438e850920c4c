"""What one training run cost, the same record for every method: the pipeline logs it, the tables show it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TrainingCosts:
    trainable_params: int = 0
    adapter_bytes: int = 0  # what the method saved (the whole model for full-parameter methods)
    peak_memory_bytes: int = 0  # trainers/memory.py: CUDA peak (with paged optimizer states) or RSS growth
    step_seconds: float = math.nan  # mean optimizer step after the first
    device_seconds: float = math.nan  # the training loop's wall time on its device
    peak_memory_kind: str = ""  # how peak_memory_bytes was measured

    def metrics(self) -> dict[str, float]:
        """The numeric costs, as MLflow metrics."""
        return {k: v for k, v in asdict(self).items() if k in COST_KEYS}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingCosts":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


COST_KEYS = tuple(f.name for f in fields(TrainingCosts) if f.type != "str")
