"""Fetching a pinned sdist never runs its code before its hash is checked: pip gets the sha256 and
--require-hashes, so a tampered archive is refused on its bytes, before its build backend is imported."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from trainers import pypi


BACKEND_HOOKS = """
def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = pathlib.Path(metadata_directory) / "evil-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\\nName: evil\\nVersion: 1.0\\n")
    return info.name
"""


def _sdist_that_runs_code(folder, marker, payload="pathlib.Path({marker!r}).write_text('ran')"):
    """evil-1.0.tar.gz: an in-tree build backend (no build dependencies) that runs `payload` (by default: leaves
    `marker`) when imported; returns the archive's sha256."""
    files = {
        "evil-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "evil-1.0/backend.py": "import pathlib\n" + payload.format(marker=str(marker)) + "\n" + BACKEND_HOOKS,
        "evil-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n",
    }
    archive = folder / "evil-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    folder.mkdir()
    marker = tmp_path / "backend-ran"
    sha = _sdist_that_runs_code(folder, marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # this folder is the whole index
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return sha, marker


def test_a_tampered_sdist_is_refused_before_its_build_code_runs(tmp_path, index):
    """The pin is a clean evil-1.0.tar.gz's digest; the index serves one whose backend differs (it leaves a marker)."""
    _, marker = index
    clean = tmp_path / "clean"
    clean.mkdir()
    pinned = _sdist_that_runs_code(clean, marker, payload="pass  # {marker}")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="evil==1.0 failed") as info:
        pypi.pip_download("evil==1.0", tmp_path / "d", wheel_only=False, sha256=pinned)
    assert len(str(info.value).splitlines()) <= 6 and pinned in str(info.value)  # pip's hash report, its last lines
    assert not marker.exists(), "the archive's build backend ran before its hash was checked"
    assert not any((tmp_path / "d").iterdir())


def test_the_pinned_sdist_is_fetched(tmp_path, index):
    sha, _ = index
    (tmp_path / "d").mkdir()
    archive = pypi.pip_download("evil==1.0", tmp_path / "d", wheel_only=False, sha256=sha)
    assert archive.name == "evil-1.0.tar.gz" and hashlib.sha256(archive.read_bytes()).hexdigest() == sha
    assert index[1].exists(), "the injected code is real: with the right hash pip does run the backend"


def test_an_sdist_without_a_pin_is_refused_without_running_pip(tmp_path, monkeypatch):
    monkeypatch.setattr(pypi.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(ValueError, match="only with its sha256"):
        pypi.pip_download("evil==1.0", tmp_path, wheel_only=False)
