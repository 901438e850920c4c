"""Output folders, the one rule every command that writes a folder follows (export, train, data build, report):

- the path must be a folder or not exist yet, and nothing on the way to it may be a file;
- an existing non-empty folder is refused unless `force` (or unless `reusable` says it is this command's own
  earlier output, e.g. a data set build it can update);
- never the source itself or a folder holding it (writing would destroy what is being read), and a folder
  inside the source only with `force`;
- `staged(out)` writes into a temporary sibling and renames it into place, so a failure leaves nothing and a
  reader never sees half a folder; `removed_on_failure(out)` undoes a folder a command made if it fails early.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class OutDirError(ValueError):
    """The output folder cannot be used; the message names the flag and the path."""


def check_out_dir(out: str | Path, *, flag: str = "--out", force: bool = False, source: str | Path | None = None,
                  reusable: Callable[[Path], bool] = lambda path: False) -> Path:
    """`out` resolved, or an OutDirError saying why it cannot be written (see the module doc)."""
    if not str(out).strip():
        raise OutDirError(f"{flag} is empty; give a folder")
    try:
        path = Path(out).expanduser().resolve()
    except (OSError, ValueError) as exc:
        raise OutDirError(f"{flag} {out!r}: {exc}") from None
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutDirError(f"{flag} {out}: {parent} is a file, not a folder")
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{flag} {out}: {path} exists and is not a folder")
    if source is not None:
        src = Path(source).expanduser().resolve()
        if path == src or path in src.parents:
            raise OutDirError(f"{flag} {out}: would overwrite its own source {src}; choose another folder")
        if src in path.parents and not force:
            raise OutDirError(f"{flag} {out}: is inside the source {src}; choose another folder or pass --force")
    if path.is_dir() and any(path.iterdir()) and not force and not reusable(path):
        raise OutDirError(f"{flag} {out}: folder is not empty; choose another folder or pass --force to replace it")
    return path


def _created_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, outermost first."""
    return [p for p in reversed(path.parents) if not p.exists()]


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (someone else wrote there): leave it


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out`; on success it replaces `out` (one rename each way), on failure
    it is removed, as are the parent folders made for it."""
    made = _created_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def removed_on_failure(out: Path, keep: Callable[[Path], bool] = lambda path: False) -> Iterator[Path]:
    """Make `out` (and its missing parents); if the body fails and `keep(out)` is false, remove what was made
    here, so a command that fails during set-up leaves no half-made folder. A folder that existed is kept."""
    made = _created_parents(out) + ([out] if not out.exists() else [])
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if out in made and not keep(out):
            shutil.rmtree(out, ignore_errors=True)
            _remove_empty(made[:-1])
        raise
