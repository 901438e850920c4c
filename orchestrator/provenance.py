"""What produced a run, as MLflow tags: dyrank's version and git commit, the versions of the libraries whose
behaviour the numbers depend on, and the device. Every benchmark and comparison rests on these."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from orchestrator.tags import PROVENANCE_PREFIX

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "ray", "mlflow")
SOURCE = Path(__file__).resolve().parent.parent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The checkout's commit (with +dirty when it has uncommitted changes), or "" outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(SOURCE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name() -> str:
    """The accelerator this process computes on, else the CPU's model name."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


@functools.cache
def _static() -> dict[str, str]:
    tags = {"version": _version("dyrank"), "commit": _git_commit() or "unknown (not a git checkout)",
            "python": platform.python_version()}
    tags.update({name: _version(name) for name in LIBRARIES})
    return {PROVENANCE_PREFIX + k: v for k, v in tags.items()}


def provenance_tags() -> dict[str, str]:
    """The tags for a run made in this process (computed once; the device is asked each time)."""
    return {**_static(), PROVENANCE_PREFIX + "device": device_name()}
