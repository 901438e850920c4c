"""hf: sources not in the cache are bad input: one line naming the id, exit 2, before anything starts."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from tests.conftest import TINY_YAML


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("field,value,said", [
    ("model.source", "hf:tiny-org/absent", "model hf:tiny-org/absent is not in"),
    ("data.dataset", "hf:qa-org/absent", "data set hf:qa-org/absent is not in"),
])
def test_an_uncached_hub_source_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, command, field, value, said):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    args = [command, str(TINY_YAML), "--set", f"{field}={value}"] + (["--out", str(tmp_path / "run")] if command == "train" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and said in err and "never downloads" in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was recorded
