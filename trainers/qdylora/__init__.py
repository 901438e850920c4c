"""QDyLoRA: one LoRA adapter of rank r_max, trained so that every rank 1..r_max works.

Built on PEFT's LoRA layers (fp and bitsandbytes 4-bit alike): only the two factor modules of each
layer are swapped for rank-truncating ones; the rest of PEFT (dropout, dtype casts, saving) is untouched.
"""

from trainers.qdylora.layer import RankTruncatedLinear
from trainers.qdylora.model import (
    RankSampler,
    attach_dynamic_rank,
    export_rank,
    get_active_rank,
    set_active_rank,
)

__all__ = ["RankTruncatedLinear", "RankSampler", "attach_dynamic_rank", "export_rank", "get_active_rank", "set_active_rank"]
