"""`dyrank plan`: per-actor estimates printed without loading weights; configs that cannot fit their declared
GPU memory are refused by plan and by run's preflight, before any actor or MLflow run exists."""

from __future__ import annotations

import re

import pytest

from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.errors import PipelineError
from orchestrator.plan import check_fits, plan
from tests.conftest import TINY_YAML, tiny_config


def _shape():
    """The tiny Llama's sizes from its preset (and its built tokenizer's vocabulary)."""
    import json

    from trainers.models import resolve_base
    from trainers.presets import PRESETS

    c = PRESETS["tiny-llama"]
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    vocab = json.loads((resolve_base("tiny-llama") / "config.json").read_text())["vocab_size"]
    # (d_out, d_in) of the block linears: q, k, v, o, gate, up, down
    linears = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)] * c["num_hidden_layers"]
    other = 2 * vocab * h + (2 * c["num_hidden_layers"] + 1) * h  # untied embeddings and lm_head, RMSNorm weights
    return linears, other


def _lora_mib(rank: int) -> float:
    """fp32 LoRA factors of `rank` on every linear of the tiny Llama's blocks, from its shape alone:
    each (in -> out) linear gets rank * (in + out) parameters."""
    linears, _ = _shape()
    return rank * sum(d_out + d_in for d_out, d_in in linears) * 4 / 2**20


def _rows(out: str) -> list[tuple[str, list[float], str, bool]]:
    """The plan table as (actor, [weights, adapter, grads, optim, activations, peak] in MiB, budget, fits)."""
    header, *lines = out[out.index("actor (MiB)"):].strip().splitlines()
    rows = []
    for line in lines:
        *cells, budget = line[30:].removesuffix("  DOES NOT FIT").split()
        rows.append((line[:30].strip(), [float(c) for c in cells], budget, not line.endswith("DOES NOT FIT")))
    return rows


def test_plan_prints_one_row_per_actor_with_the_adapter_sizes_of_the_model_shape(capsys):
    assert main(["plan", str(TINY_YAML)]) == 0
    rows = {role: (cells, budget) for role, cells, budget, _ in _rows(capsys.readouterr().out)}
    assert list(rows) == ["trainer qdylora r8", "trainer qlora-r2", "trainer qlora-r8", "evaluator"]
    for role, rank in (("trainer qdylora r8", 8), ("trainer qlora-r2", 2), ("trainer qlora-r8", 8), ("evaluator", 8)):
        (weights, adapter, grads, optim, activations, peak), budget = rows[role]
        assert budget == "CPU"
        assert adapter == pytest.approx(_lora_mib(rank), abs=0.006), role
        trains = role.startswith("trainer")
        assert grads == (adapter if trains else 0.0), role  # one gradient per trainable weight, same dtype
        assert optim == pytest.approx(2 * _lora_mib(rank) if trains else 0.0, abs=0.006), role  # AdamW: 2 moments
        assert peak == pytest.approx(weights + adapter + grads + optim + activations, abs=0.03), role


@pytest.mark.parametrize("r_max, own_row", [(8, False), (4, True)])
def test_a_qlora_svd_baseline_has_a_row_only_if_it_trains_on_its_own(capsys, r_max, own_row):
    """qlora-svd at the grid's r8 is made from the qlora-r8 training (no actor of its own); at r4, off the grid
    [2, 8], it trains on its own trainer."""
    assert main(["plan", str(TINY_YAML), f"baselines.methods=[{{method: qlora-svd, r_max: {r_max}}}]"]) == 0
    roles = [role for role, *_ in _rows(capsys.readouterr().out)]
    assert roles == ["trainer qdylora r8", "trainer qlora-r2", "trainer qlora-r8",
                     *([f"trainer qlora-svd-r{r_max}"] if own_row else []), "evaluator"]


def test_plan_refuses_what_does_not_fit(capsys):
    budget_gib = 0.001
    _shape()  # builds the tiny preset first where this test runs alone: its progress bars are not the error
    capsys.readouterr()
    code = main(["plan", str(TINY_YAML), "--set", "resources.trainer_gpus=1", "--set", f"resources.gpu_memory_gb={budget_gib}"])
    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    # each trainer takes a whole GPU of 0.001 GiB and every tiny trainer needs more; the evaluator is a CPU actor
    over = [(role, peak) for role, (*_, peak), budget, _ in rows if budget != "CPU" and peak > budget_gib * 1024]
    assert [role for role, *_ in over] == ["trainer qdylora r8", "trainer qlora-r2", "trainer qlora-r8"]
    assert [role for role, _, _, fits in rows if not fits] == [role for role, _ in over]
    assert [budget for role, _, budget, _ in rows] == ["0.0", "0.0", "0.0", "CPU"]  # the table's one decimal
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dyrank plan: error: resources: ")
    # the error names each actor over its share with its peak and the share, in the table's order
    named = re.findall(r"(trainer [^:;(]+): ([0-9.e-]+) GiB > ([0-9.e-]+) GiB", err)
    assert [role for role, _, _ in named] == [role for role, _ in over]
    for (role, peak_gib, share_gib), (_, peak_mib) in zip(named, over):
        assert float(peak_gib) * 1024 == pytest.approx(peak_mib, abs=0.01), role
        assert float(share_gib) == budget_gib, role


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
    """examples/methods-tiny.yaml: one row per baseline job in the file's order, each with its method's own terms,
    checked against sizes counted here from the model's shape."""
    from tests.conftest import REPO

    example = REPO / "examples" / "methods-tiny.yaml"
    assert main(["plan", str(example)]) == 0
    rows = {role: cells for role, cells, _, _ in _rows(capsys.readouterr().out)}
    assert list(rows) == ["trainer qdylora r4", "trainer qlora-r4", "trainer lora-r4", "trainer dylora-r4",
                          "trainer adalora-r2", "trainer bitlora-1bit", "trainer bitlora-ternary",
                          "trainer galore-r128", "trainer galore8bit-r128", "evaluator"]
    linears, other = _shape()
    # lora, dylora, adalora and galore load an unquantized base: quantization.base_dtype, float32 unless set
    full_base = (sum(o * i for o, i in linears) + other) * 4 / 2**20
    for role, (weights, adapter, grads, optim, activations, peak) in rows.items():
        assert peak == pytest.approx(weights + adapter + grads + optim + activations, abs=0.03), role
        if "galore" in role:  # full-parameter: no adapter, a gradient for every base weight in its dtype
            assert (adapter, grads, weights) == (0.0, pytest.approx(full_base, abs=0.006), pytest.approx(full_base, abs=0.006)), role
        elif role != "evaluator":  # AdaLoRA starts at init_r 4 and prunes later: its adapter is sized at 4
            assert adapter == grads == pytest.approx(_lora_mib(4), abs=0.006), role
            assert optim == pytest.approx(2 * _lora_mib(4), abs=0.006), role  # AdamW: two fp32 moments
        if role.removeprefix("trainer ").split("-")[0] in ("lora", "dylora", "adalora", "galore", "galore8bit"):
            assert weights == pytest.approx(full_base, abs=0.006), role
    # GaLore keeps AdamW's moments in the projected space: rank clamped to 16 (half the smallest side, 32) on this
    # model, moments of r x the larger side per block linear plus full-size ones for the rest, and an fp32 basis
    # of r x the smaller side per linear; 8-bit GaLore stores the moments in 2 bytes instead of 8.
    r = 16
    moments = sum(r * max(d) for d in linears) + other
    projectors = sum(r * min(d) for d in linears) * 4
    assert rows["trainer galore-r128"][3] == pytest.approx((moments * 8 + projectors) / 2**20, abs=0.006)
    assert rows["trainer galore8bit-r128"][3] == pytest.approx((moments * 2 + projectors) / 2**20, abs=0.006)
