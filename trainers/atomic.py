"""Durable writes: a file or a folder is either wholly there (its bytes on disk) or not there at all.

A plain `write_text` torn by a crash or a full disk leaves half a file that the next start trusts; a
rename without fsync can survive a power cut as an empty file. So: write beside the target, fsync the
file, rename, fsync the folder (the rename itself lives in the folder's entry). Also here: reading a
JSON-lines log whose last line a kill tore in half.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

_log = logging.getLogger("dyrank.files")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (the folder's entry list is data too)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file under folder, then every folder bottom-up: before the folder is renamed into place."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        (fsync_dir if path.is_dir() else fsync_file)(path)
    fsync_dir(folder)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write beside the target, fsync, rename over it, fsync the folder: a reader (or a restart after a
    crash) sees the old content or the new, never half. On failure (ENOSPC...) the target is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, obj, indent: int | None = 2) -> Path:
    return write_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_jsonl_log(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines log. A last line that does not parse (a kill mid-write) is dropped with a
    warning; a bad line anywhere else is real corruption and raises."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if index != len(lines) - 1:
                raise ValueError(f"{path}: line {index + 1} is not JSON (the file is corrupt)") from None
            _log.warning("%s: dropped a torn last line (%d bytes), the trace of an interrupted write", path, len(line))
    return rows
