"""What the cache holds, and keeping it bounded.

Every pipeline works in `<cache>/pipelines/<parent run id>/`: one folder per training job (its checkpoints,
metrics, final adapter), the driver's copy of the main adapter, the report. Checkpoints exist to resume an
interrupted pipeline; once it finished they are dead weight (a 7B run's optimizer state is gigabytes per
job). So: a pipeline that finishes writes a FINISHED marker and drops its jobs' checkpoints, keeping the
final adapters (retention); `dyrank cache prune` does the same for finished pipelines whose retention did
not run (an older dyrank, a crash between the two), and with `--adapters` removes their folders whole
(the adapters are in MLflow). A folder without the marker belongs to a pipeline that may still be resumed:
nothing in it is touched.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trainers.atomic import write_json_atomic
from trainers.paths import cache_dir, dyrank_home

FINISHED_MARKER = "FINISHED"
CHECKPOINTS = "checkpoints"  # trainers.finetune.CHECKPOINT_DIR, under each job's folder
SCRATCH = ("downloaded",)  # what the driver downloaded from MLflow to resume: in MLflow already


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _droppable(folder: Path) -> list[Path]:
    """The intermediate files of a finished pipeline: each job's checkpoints and the driver's scratch."""
    found = [job / CHECKPOINTS for job in folder.iterdir() if (job / CHECKPOINTS).is_dir()]
    return found + [folder / name for name in SCRATCH if (folder / name).exists()]


def mark_finished(folder: Path) -> int:
    """Retention for a pipeline that just finished: marker first (so a crash in between leaves it prunable),
    then its intermediate files dropped. Returns the bytes freed."""
    write_json_atomic(folder / FINISHED_MARKER, {"finished_at": time.time()})
    freed = 0
    for path in _droppable(folder):
        freed += _bytes(path)
        shutil.rmtree(path, ignore_errors=True)
    return freed


@dataclass
class PipelineFolder:
    path: Path
    finished: bool
    bytes: int
    droppable_bytes: int


def pipeline_folders() -> list[PipelineFolder]:
    root = cache_dir("pipelines")
    folders = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        finished = (path / FINISHED_MARKER).is_file()
        droppable = sum(_bytes(p) for p in _droppable(path)) if finished else 0
        folders.append(PipelineFolder(path, finished, _bytes(path), droppable))
    return folders


def cache_listing() -> str:
    """The cache's areas with their sizes, then every pipeline folder: finished or resumable, size, droppable."""
    home = dyrank_home()
    lines = [f"dyrank cache: {home}"]
    for area in sorted(p for p in home.iterdir() if p.is_dir()):
        lines.append(f"  {area.name + '/':<20} {human_bytes(_bytes(area)):>10}")
    folders = pipeline_folders()
    if folders:
        lines.append("pipelines:")
        for f in folders:
            state = "finished" if f.finished else "unfinished (kept for dyrank resume)"
            extra = f", {human_bytes(f.droppable_bytes)} prunable" if f.droppable_bytes else ""
            lines.append(f"  {f.path.name}  {human_bytes(f.bytes):>10}  {state}{extra}")
    return "\n".join(lines)


def prune(adapters: bool = False) -> tuple[list[Path], int]:
    """Finished pipelines only: their intermediate files, or (adapters=True) their whole folders.
    Returns (what was removed, bytes freed). Unfinished pipelines are never touched."""
    removed, freed = [], 0
    for f in pipeline_folders():
        if not f.finished:
            continue
        for path in ([f.path] if adapters else _droppable(f.path)):
            freed += _bytes(path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed, freed


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
