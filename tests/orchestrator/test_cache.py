"""The cache stays bounded: a finished pipeline keeps its adapters and drops its checkpoints; `dyrank cache`
lists sizes and prunes finished pipelines without touching one that may still be resumed."""

from __future__ import annotations

import pytest

from orchestrator.cache import FINISHED_MARKER, mark_finished
from orchestrator.cli import main


def _pipeline(home, run_id: str) -> dict:
    """A pipeline work folder as a run leaves it: jobs with checkpoints, metrics and adapters."""
    root = home / "pipelines" / run_id
    files = {}
    for job in ("train", "baseline-qlora-r2"):
        for rel, size in ((f"{job}/checkpoints/step-00000010/optimizer.safetensors", 4096),
                          (f"{job}/adapter/adapter_model.safetensors", 1024), (f"{job}/metrics.jsonl", 10)):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
            files[rel] = path
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 1024)
    return {"root": root, **files}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DYRANK_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_retention_on_success_keeps_adapters_and_drops_checkpoints(home):
    run = _pipeline(home, "a" * 32)
    freed = mark_finished(run["root"])
    assert freed == 2 * 4096 and (run["root"] / FINISHED_MARKER).is_file()
    assert not run["train/checkpoints/step-00000010/optimizer.safetensors"].exists()
    assert run["train/adapter/adapter_model.safetensors"].exists()
    assert run["baseline-qlora-r2/adapter/adapter_model.safetensors"].exists()
    assert (run["root"] / "adapter" / "adapter_model.safetensors").exists()


def test_cache_list_and_prune_leave_unfinished_pipelines_alone(home, capsys):
    finished, unfinished = _pipeline(home, "f" * 32), _pipeline(home, "u" * 32)
    (finished["root"] / FINISHED_MARKER).write_text("{}")  # finished by an older dyrank: nothing trimmed yet
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{'f' * 32}" in listing and "finished, 8.0 KiB prunable" in listing
    assert f"{'u' * 32}" in listing and "unfinished (kept for dyrank resume)" in listing
    assert "pipelines/" in listing

    before = {p: p.read_bytes() for p in unfinished["root"].rglob("*") if p.is_file()}
    assert main(["cache", "prune"]) == 0
    assert "freed 8.0 KiB" in capsys.readouterr().out
    assert not (finished["root"] / "train" / "checkpoints").exists()
    assert finished["train/adapter/adapter_model.safetensors"].exists()
    assert {p: p.read_bytes() for p in unfinished["root"].rglob("*") if p.is_file()} == before

    assert main(["cache", "prune", "--adapters"]) == 0
    assert not finished["root"].exists() and unfinished["root"].exists()
    assert {p: p.read_bytes() for p in unfinished["root"].rglob("*") if p.is_file()} == before
