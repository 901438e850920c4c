"""`dyrank env`: what a bug report needs in one screen: versions (dyrank, Python, the libraries the numbers
depend on, the optional extras), the compute devices, and whether Ray and the tracking store can be reached.
Nothing is started: Ray and MLflow are only probed at their addresses."""

from __future__ import annotations

import os
from importlib import metadata

from orchestrator.provenance import LIBRARIES, device_name, provenance_tags
from orchestrator.tags import PROVENANCE_PREFIX

OPTIONAL = {"lm-eval": "dyrank[harness]", "trl": "dyrank[test]"}


def dyrank_version() -> str:
    """The installed distribution's version (no torch import: `dyrank --version` answers at once)."""
    try:
        return metadata.version("dyrank")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _devices() -> list[tuple[str, str]]:
    import torch

    rows = [("cpu", f"{os.cpu_count()} cores; torch threads {torch.get_num_threads()}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    else:
        rows.append(("cuda", "none visible" + (" (CUDA_VISIBLE_DEVICES set)" if os.environ.get("CUDA_VISIBLE_DEVICES") else "")))
    return rows


def _ray(address: str | None) -> str:
    from orchestrator import ray_runtime
    from orchestrator.errors import RayConnectError

    address = os.environ.get("RAY_ADDRESS") or address
    if not address or address in ("auto", "local"):
        return "no cluster named: `dyrank run` starts a private local Ray (127.0.0.1)"
    try:
        ray_runtime.check_reachable(address)
    except RayConnectError as exc:
        return f"UNREACHABLE: {exc}"
    return f"{address}: reachable"


def _tracking(uri: str | None) -> str:
    from orchestrator.errors import TrackingError
    from orchestrator.tracking import check_reachable, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(uri)
        check_reachable(uri)
    except (TrackingError, ValueError) as exc:
        return f"UNREACHABLE: {exc}"
    return f"{uri}: reachable"


def env_report(tracking_uri: str | None = None, ray_address: str | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections of (name, value) rows; the reachability rows start with UNREACHABLE when a probe failed."""
    from trainers.paths import cache_dir

    devices = _devices()  # imports torch first, so the device row names the accelerator
    tags = {k.removeprefix(PROVENANCE_PREFIX): v for k, v in provenance_tags().items()}
    versions = [("dyrank", f"{tags['version']} ({tags['commit']})"), ("python", tags["python"])]
    versions += [(name, tags[name]) for name in LIBRARIES]
    for package, extra in OPTIONAL.items():
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            versions.append((package, f"not installed (pip install '{extra}')"))
    return [
        ("versions", versions),
        ("devices", [("device", device_name()), *devices]),
        ("services", [("ray", _ray(ray_address)), ("tracking", _tracking(tracking_uri)), ("cache", str(cache_dir()))]),
    ]


def format_report(sections) -> str:
    width = max(len(name) for _, rows in sections for name, _ in rows)
    lines = []
    for title, rows in sections:
        lines.append(f"{title}:")
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
