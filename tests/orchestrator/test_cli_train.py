"""`dyrank train` then `dyrank export` from the command line, loaded back in plain PEFT."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from peft import PeftModel

from orchestrator.cli import main
from tests.conftest import TINY_YAML
from trainers.hub import adapter_base_source
from trainers.models import load_base_model, resolve_base

DYRANK = [sys.executable, "-m", "orchestrator.cli"]


def test_train_then_export_loads_in_plain_peft(tmp_path):
    out, exported = tmp_path / "run", tmp_path / "r4"
    subprocess.run([*DYRANK, "train", str(TINY_YAML), "--out", str(out), "--set", "training.max_steps=6"],
                   check=True, capture_output=True, text=True)
    for name in ("config.yaml", "metrics.jsonl", "train_summary.json", "adapter/adapter_model.safetensors"):
        assert (out / name).exists(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6

    done = subprocess.run([*DYRANK, "export", str(out), "--rank", "4", "--out", str(exported)],
                          check=True, capture_output=True, text=True)
    assert "rank-4" in done.stdout
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"  # portable: the preset's id, not a cache path
    base = load_base_model(resolve_base(adapter_base_source(exported)), quant=None, device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, exported)
    assert model.peft_config["default"].r == 4
    card = (exported / "README.md").read_text()  # the model card every export writes
    assert "base_model: tiny-llama" in card and "library_name: peft" in card and "| rank | 4 |" in card
    assert "None: this rank was chosen by whoever exported it" in card and "| train |" in card
    assert f"dyrank export {out.name} --rank 4 --out r4" in card and "name: tiny" in card


def test_train_refuses_to_overwrite_and_resume_of_a_finished_run_is_a_noop(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(TINY_YAML), "--out", str(out), "--set", "training.max_steps=2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    assert main(["train", "--resume", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before
