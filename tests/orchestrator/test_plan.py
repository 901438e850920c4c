"""`dyrank plan`: per-actor estimates printed without loading weights; configs that cannot fit their declared
GPU memory are refused by plan and by run's preflight, before any actor or MLflow run exists."""

from __future__ import annotations

import pytest

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.errors import PipelineError
from orchestrator.plan import check_fits, plan
from tests.conftest import TINY_YAML, tiny_config


def _lora_mib(rank: int) -> float:
    """fp32 LoRA factors of `rank` on every linear of the tiny Llama's blocks, from its shape alone:
    each (in -> out) linear gets rank * (in + out) parameters."""
    from trainers.presets import PRESETS

    c = PRESETS["tiny-llama"]
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    per_block = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)  # q, k and v, o, gate and up, down
    return rank * per_block * c["num_hidden_layers"] * 4 / 2**20


def test_plan_prints_one_row_per_actor_with_the_adapter_sizes_of_the_model_shape(capsys):
    assert main(["plan", str(TINY_YAML)]) == 0
    out = capsys.readouterr().out
    header, *lines = out[out.index("actor (MiB)"):].strip().splitlines()
    rows = {line[:30].strip(): line[30:].split() for line in lines}
    assert list(rows) == ["trainer qdylora r8", "trainer qlora-r2", "trainer qlora-r8", "evaluator"] == \
        [line[:30].strip() for line in lines]
    for role, rank in (("trainer qdylora r8", 8), ("trainer qlora-r2", 2), ("trainer qlora-r8", 8), ("evaluator", 8)):
        *cells, budget = rows[role]
        weights, adapter, grads, optim, activations, peak = map(float, cells)
        assert budget == "CPU"
        assert adapter == pytest.approx(_lora_mib(rank), abs=0.006), role
        trains = role.startswith("trainer")
        assert grads == (adapter if trains else 0.0), role  # one gradient per trainable weight, same dtype
        assert optim == pytest.approx(2 * _lora_mib(rank) if trains else 0.0, abs=0.006), role  # AdamW: 2 moments
        assert peak == pytest.approx(weights + adapter + grads + optim + activations, abs=0.03), role


def test_plan_refuses_what_does_not_fit(capsys):
    code = main(["plan", str(TINY_YAML), "--set", "resources.trainer_gpus=1", "--set", "resources.gpu_memory_gb=0.001"])
    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    assert "resources:" in captured.err and "trainer qdylora r8" in captured.err and "0.0 GiB" in captured.err


def test_budget_is_read_from_the_gpu_resource_name():
    cfg = tiny_config("resources.gpu_memory_resource=gpu_32gb", "resources.trainer_gpus=0.5")
    assert cfg.resources.gpu_budget_gb() == 32.0
    trainer = plan(cfg)[0]
    assert trainer.budget_gb == 16.0 and trainer.fits
    assert tiny_config().resources.gpu_budget_gb() is None


def test_a_larger_batch_can_tip_a_card_over():
    cfg = tiny_config("resources.trainer_gpus=1", "resources.gpu_memory_gb=0.01")
    fits = plan(cfg)[0].estimate.total
    cfg = tiny_config("resources.trainer_gpus=1", f"resources.gpu_memory_gb={fits * 1.01 / 2**30}")
    check_fits(cfg)
    cfg = tiny_config("resources.trainer_gpus=1", f"resources.gpu_memory_gb={fits * 1.01 / 2**30}", "training.batch_size=64")
    with pytest.raises(PipelineError, match="trainer qdylora r8"):
        check_fits(cfg)


def test_run_refuses_before_recording_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["run", str(TINY_YAML), "--set", "resources.trainer_gpus=1", "--set", "resources.gpu_memory_gb=0.001"])
    assert code == EXIT_BAD_INPUT
    assert not (tmp_path / "mlflow.db").exists()


def test_every_method_of_a_pipeline_is_planned(capsys):
    from orchestrator.config import load_config
    from tests.conftest import REPO

    example = REPO / "examples" / "methods-tiny.yaml"
    assert main(["plan", str(example)]) == 0
    out = capsys.readouterr().out
    assert all(f"trainer {job.name}" in out for job in load_config(example).baseline_jobs())
    for method in ("lora", "dylora", "adalora", "bitlora", "galore", "galore8bit"):
        assert f"trainer {method}" in out
