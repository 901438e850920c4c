"""`build`: split files plus a manifest with counts and hashes; idempotent; rebuilt when the recipe or a
file changes. Runs on the committed source slices via `source_dir`, never the network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trainers.datasets.splits import read_jsonl
from trainers.datasets import BUILDABLE_DATASETS, build, read_manifest
from trainers.datasets.common import SPLITS
from trainers.datasets.sources import SOURCES

FIXTURES = Path(__file__).parent / "fixtures"
SOURCE_DIRS = {"countries": FIXTURES / "countryinfo", "wordnet": FIXTURES / "wordnet-3.0"}


@pytest.mark.parametrize("name", sorted(BUILDABLE_DATASETS))
def test_manifest_matches_the_files(name, tmp_path):
    out = build(name, tmp_path / name, source_dir=SOURCE_DIRS[name], progress=lambda _: None)
    manifest = read_manifest(out)
    spec = BUILDABLE_DATASETS[name]
    source = SOURCES[spec.source]
    assert manifest["name"] == name and manifest["builder_version"] == spec.version
    assert (manifest["source"]["package"], manifest["source"]["version"]) == (source.package, source.version)
    assert manifest["source"]["sha256"] is None  # a folder, not the verified archive
    assert sorted(manifest["files"]) == sorted(SPLITS)
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = out / manifest["files"][split]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"][split]
        records = read_jsonl(path)  # the trainer's own reader takes them
        assert len(records) == manifest["counts"][split]
        groups = {r[spec.group_key] for r in records}
        assert len(groups) == manifest["groups"][split]
        for group in groups:
            assert seen.setdefault(group, split) == split


def test_idempotent_and_rebuilt_when_needed(tmp_path):
    messages: list[str] = []
    out = build("wordnet", tmp_path / "wn", source_dir=SOURCE_DIRS["wordnet"], progress=messages.append)
    manifest = (out / "manifest.json").read_text()
    stamp = (out / "train.jsonl").stat().st_mtime_ns

    build("wordnet", tmp_path / "wn", source_dir=SOURCE_DIRS["wordnet"], progress=messages.append)
    assert "up to date" in messages[-1] and (out / "train.jsonl").stat().st_mtime_ns == stamp

    (out / "test.jsonl").write_text("")  # a damaged file is noticed and rebuilt
    build("wordnet", tmp_path / "wn", source_dir=SOURCE_DIRS["wordnet"], progress=messages.append)
    assert (out / "manifest.json").read_text() == manifest  # same bytes: deterministic

    build("wordnet", tmp_path / "wn", source_dir=SOURCE_DIRS["wordnet"], progress=messages.append, max_records=20)
    rebuilt = read_manifest(out)
    assert rebuilt["options"] == {"max_records": 20} and sum(rebuilt["counts"].values()) == 20


def test_unknown_name_or_option(tmp_path):
    with pytest.raises(ValueError, match="buildable: countries, wordnet"):
        build("imagenet", tmp_path)
    with pytest.raises(ValueError, match="max_records"):
        build("countries", tmp_path, source_dir=SOURCE_DIRS["countries"], max_records=5)


def test_split_files_builds_into_the_cache(tmp_path, monkeypatch):
    from trainers.datasets import split_files

    monkeypatch.setenv("DYRANK_HOME", str(tmp_path / "home"))
    paths = split_files("countries", source_dir=SOURCE_DIRS["countries"])
    assert list(paths) == list(SPLITS)
    assert all(p.parent == (tmp_path / "home" / "data" / "countries").resolve() and p.is_file() for p in paths.values())
