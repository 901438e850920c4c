"""GaLore's options (defaults from the GaLore paper), shared by galore and galore8bit."""

from __future__ import annotations

from pydantic import Field

from trainers.config_base import PositiveFloat, PositiveInt, Section


class GaloreOptions(Section):
    """GaLore's projection; full-parameter training, no adapter."""

    rank: PositiveInt = Field(128, description="Projection rank; clamped to half the smallest projected dimension so "
                              "that small models are really projected.")
    update_proj_gap: PositiveInt = Field(200, description="Steps between two SVD refreshes of the projection.")
    scale: PositiveFloat = Field(0.25, description="Scale of the projected-back update (GaLore's alpha).")


def projection_rank(adapter) -> int:
    """The rank a GaLore run is known by: its projection rank."""
    return adapter.galore.rank


def effective_rank(rank: int, smallest_dim: int) -> int:
    """`rank`, or half the smallest projected dimension when `rank` would not be below it (tiny models):
    a projection of full rank saves nothing and tests nothing."""
    return rank if rank < smallest_dim else max(1, smallest_dim // 2)
