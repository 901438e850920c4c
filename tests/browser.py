"""Headless Chromium (Debian's `chromium`) for the browser tests: the DOM after scripts ran, as text.

.ci/run installs the package; on a machine without it the first browser test installs it (as root,
with apt), or fails saying how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                       capture_output=True, check=False, timeout=900)
        found = shutil.which("chromium")
    assert found, "headless browser tests need Debian's chromium: apt-get install -y chromium (.ci/run does)"
    return found


def dump_dom(url: str, budget_ms: int = 10_000, timeout: float = 120) -> str:
    """The serialized DOM once `budget_ms` of virtual time has passed (scripts, timers and fetches run)."""
    with tempfile.TemporaryDirectory(prefix="dyrank-chromium-") as profile:
        done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                               "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout
