"""GaLore with an 8-bit AdamW: galore's code and options (adapter.galore), another optimizer."""

from trainers.methods import MethodSpec, register_method
from trainers.methods.galore.config import GaloreOptions, projection_rank

register_method(MethodSpec(
    name="galore8bit", label="GaLore 8-bit", trainer="trainers.methods.galore.method:Galore8bitMethod", base="16bit",
    saves_adapter=False, options_key="galore", options=GaloreOptions, rank_of=projection_rank,
    summary="GaLore with an 8-bit AdamW (galore-torch's on CUDA; its projector with bitsandbytes' 8-bit AdamW on the CPU)",
))
