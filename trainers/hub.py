"""Models by their Hub names: `hf:ORG/NAME@REVISION`, read from huggingface_hub's local cache, and the
portable base id an exported adapter names in `base_model_name_or_path`.

Nothing is downloaded at run time: resolution is `snapshot_download(..., local_files_only=True)` against
the Hub cache (`HF_HUB_CACHE`, read when called so a test or a user can point it anywhere), and a model
that is not there is one line naming the id and how to fetch it. Import-light (no torch): the config
schema parses the id with `parse_hub_id`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

HUB_PREFIX = "hf:"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubId:
    repo_id: str  # ORG/NAME
    revision: str | None  # a branch, tag or commit; None: main

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_id(source: str) -> bool:
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> HubId:
    """`hf:ORG/NAME` or `hf:ORG/NAME@REVISION` -> HubId; a ValueError saying what is wrong otherwise."""
    body = source[len(HUB_PREFIX):]
    repo_id, _, revision = body.partition("@")
    if not _REPO.match(repo_id) or ".." in repo_id:
        raise ValueError(f"{source!r} is not a Hub id: expected hf:ORG/NAME or hf:ORG/NAME@REVISION")
    if "@" in body and not (_REVISION.match(revision) and ".." not in revision):
        raise ValueError(f"{source!r}: the revision after @ is empty or not a branch, tag or commit")
    return HubId(repo_id, revision or None)


def hub_cache_dir() -> str | None:
    """HF_HUB_CACHE as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_CACHE") or None


def resolve_hub_model(source: str) -> Path:
    """The cached snapshot folder of `hf:ORG/NAME@REVISION`; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub = parse_hub_id(source)
    try:
        folder = snapshot_download(hub.repo_id, revision=hub.revision, cache_dir=hub_cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError):
        where = hub_cache_dir() or "the Hugging Face cache"
        raise FileNotFoundError(
            f"model {source} is not in {where} and dyrank never downloads at run time; fetch it once with "
            f"`hf download {hub.repo_id}" + (f" --revision {hub.revision}" if hub.revision else "") + "`"
        ) from None
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model {source}: the cached snapshot {folder} has no config.json")
    return folder


# ---- the base an adapter names -----------------------------------------------------------------------
@dataclass(frozen=True)
class PortableBase:
    """What an exported adapter_config.json says its base is: `name_or_path` and PEFT's `revision`."""

    name_or_path: str
    revision: str | None = None


def portable_base(source: str, resolved: Path | None = None) -> PortableBase:
    """The config's model source as something that means the same on another machine: a Hub id with the
    commit it resolved to (plain PEFT and transformers load that by themselves), a preset or registered id
    (dyrank resolves those), or the user's own path (a folder or .gguf). Never a dyrank cache folder."""
    if is_hub_id(source):
        hub = parse_hub_id(source)
        commit = resolved.name if resolved is not None and _COMMIT.match(resolved.name) else hub.revision
        return PortableBase(hub.repo_id, commit)
    path = Path(source).expanduser()
    if path.exists():  # the user's own folder or .gguf, absolute so it loads from any working folder
        return PortableBase(str(path.resolve()))
    return PortableBase(source)  # a preset or registered id


def set_portable_base(adapter_dir: str | Path, source: str) -> PortableBase:
    """Rewrite a saved adapter_config.json so its base is `portable_base(source)` instead of the folder the
    base was loaded from (PEFT records that, and it is a path in the cache)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    loaded_from = config.get("base_model_name_or_path") or ""
    base = portable_base(source, Path(loaded_from or "."))
    config["base_model_name_or_path"], config["revision"] = base.name_or_path, base.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = path.with_name("README.md")  # PEFT's template card names the same folder as its base_model
    if loaded_from and card.is_file():
        card.write_text(card.read_text().replace(loaded_from, base.name_or_path))
    return base


def repair_portable_base(adapter_dir: str | Path, source: str) -> bool:
    """An adapter saved before bases were portable names the folder its base was loaded from (a dyrank cache
    folder, maybe another machine's) where `source` is an id: name `source`'s portable form instead.
    Returns whether it changed anything."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    named = config.get("base_model_name_or_path") or ""
    if not Path(named).is_absolute() or named == portable_base(source).name_or_path:
        return False
    set_portable_base(adapter_dir, source)
    return True


def adapter_base_source(adapter_dir: str | Path) -> str:
    """The dyrank model source an adapter folder was trained on, from its adapter_config.json."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return source_of(config["base_model_name_or_path"], config.get("revision"))


def source_of(name_or_path: str, revision: str | None = None) -> str:
    """The dyrank model source behind an adapter's portable base (the inverse of `portable_base`)."""
    if _REPO.match(name_or_path) and not Path(name_or_path).exists():  # ORG/NAME, not a relative folder
        return f"{HUB_PREFIX}{name_or_path}" + (f"@{revision}" if revision else "")
    return name_or_path
