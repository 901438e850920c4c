"""A Hugging Face Hub cache built on disk from a local folder, in huggingface_hub's layout, so `hf:` sources
resolve offline in tests: models--ORG--NAME/snapshots/<commit>/..., refs/<branch> holding the commit."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, branch: str = "main", repo_type: str = "models") -> str:
    """Copy `folder` in as one snapshot of `repo_id`; returns the (made-up, deterministic) 40-hex commit."""
    commit = hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
    repo = Path(cache) / f"{repo_type}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit
