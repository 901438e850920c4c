"""GaLore: full-parameter training whose gradients are projected to a low-rank subspace (galore-torch).
method.py: the optimizers and the recipe's verbs; memory.py: its memory-estimate terms."""

from trainers.methods import MethodSpec, register_method
from trainers.methods.galore.config import GaloreOptions, projection_rank

register_method(MethodSpec(
    name="galore", label="GaLore", trainer="trainers.methods.galore.method:GaloreMethod", base="16bit",
    saves_adapter=False, options_key="galore", options=GaloreOptions, rank_of=projection_rank,
    summary="full-parameter training with GaLore's low-rank gradient projection (galore-torch AdamW)",
))
