"""Shared test setup: an isolated cache, tiny models built from a config, a GPU marker that skips on CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before any project import: presets and built data go to a test cache, never the user's.
os.environ.setdefault("DYRANK_HOME", str(Path(tempfile.gettempdir()) / "dyrank-test-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_YAML = REPO / "examples" / "tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"


def pytest_collection_modifyitems(config, items):
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
