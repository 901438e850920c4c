"""The one cache folder (models, presets and built data live here under an absolute path), and file hashing.

Ray actors run in working folders of their own, so nothing the pipeline needs may hang off the
current directory. `DYRANK_HOME` overrides the default `~/.cache/dyrank`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def dyrank_home(create: bool = True) -> Path:
    home = Path(os.environ.get("DYRANK_HOME", "~/.cache/dyrank")).expanduser().resolve()
    if create:  # a look-up (is the model fetched?) creates nothing
        home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    path = dyrank_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
