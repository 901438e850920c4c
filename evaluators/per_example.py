"""Per-example values of one scoring, kept as one compact array per run and split, so paired comparisons (fidelity,
the smallest-not-worse policy) re-read them instead of evaluating again.

The array is float64 of shape (len(COLUMNS), examples): rows "loss_sum" (summed completion-token loss), "tokens"
(completion tokens) and "exact" (teacher-forced exact match, 0/1), in the split's example order
(evaluators/metrics.py `evaluate` fills the same columns). `numpy.load` reads it anywhere, no dyrank needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = ("loss_sum", "tokens", "exact")


ARTIFACT_DIR = "per_example"  # the folder of a run's artifacts that holds them


def artifact_name(split: str, rank: int | None = None) -> str:
    """The file a run holds its `split`'s per-example values in (validation.npy, under ARTIFACT_DIR); a run that
    scored several ranks (a qlora-svd baseline) holds one per rank (validation_r4.npy)."""
    return f"{split}{'' if rank is None else f'_r{rank}'}.npy"


def to_array(columns: dict) -> np.ndarray:
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"per-example values lack {missing}; they have {sorted(columns)}")
    return np.asarray([columns[c] for c in COLUMNS], dtype=np.float64)


def from_array(array: np.ndarray) -> dict[str, np.ndarray]:
    if array.ndim != 2 or array.shape[0] != len(COLUMNS):
        raise ValueError(f"a per-example array has shape ({len(COLUMNS)}, examples), got {array.shape}")
    return dict(zip(COLUMNS, array))


def save(columns: dict, folder: Path, split: str, rank: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / artifact_name(split, rank)
    np.save(path, to_array(columns))
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    return from_array(np.load(path, allow_pickle=False))
