"""RankSweep: one load, every rank, and each rank scores exactly what its exported adapter scores."""

from __future__ import annotations

import pytest

import evaluators.sweep as sweep_module
from evaluators.metrics import evaluate
from evaluators.sweep import RankSweep, load_adapter
from trainers.models import QuantSettings
from trainers.methods.qdylora import export_rank, get_active_rank


@pytest.fixture(scope="module")
def sweep(tiny_run):
    return RankSweep(tiny_run.base_path, tiny_run.adapter_dir, tiny_run.examples, tokenizer=tiny_run.tokenizer,
                     batch_size=8)


def test_sweep_rank_equals_its_export(sweep, tiny_run, tmp_path):
    # The key promise: scoring rank r in place (slices + alpha/r) is scoring the standalone rank-r adapter.
    r_max = tiny_run.cfg.adapter.r_max
    losses = {}
    for rank in (1, r_max // 2, r_max):
        swept = sweep.evaluate_rank(rank)
        exported = load_adapter(tiny_run.base_path, export_rank(tiny_run.adapter_dir, rank, tmp_path / f"r{rank}"))
        plain = evaluate(exported, tiny_run.examples, tiny_run.tokenizer, batch_size=8)
        assert swept["rank"] == rank
        assert swept["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-4)
        assert swept["eval_tokens"] == plain["eval_tokens"]
        losses[rank] = swept["eval_loss"]
    # ...and the ranks are really different models, or the comparison above would be vacuous.
    values = sorted(losses.values())
    assert all(b - a > 1e-4 * abs(b) for a, b in zip(values, values[1:])), losses


def test_sweep_loads_the_base_once(tiny_run, monkeypatch):
    calls = []
    real = sweep_module.load_base_model
    monkeypatch.setattr(sweep_module, "load_base_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = RankSweep(tiny_run.base_path, tiny_run.adapter_dir, tiny_run.examples[:8], tokenizer=tiny_run.tokenizer,
                      gen_records=tiny_run.records[:2], max_new_tokens=2)
    model = small.model
    rows = small.sweep()
    assert [row["rank"] for row in rows] == list(range(1, tiny_run.cfg.adapter.r_max + 1))
    assert small.loads == 1 and len(calls) == 1
    assert small.model is model and get_active_rank(model) == tiny_run.cfg.adapter.r_max
    for row in rows:
        assert 0.0 <= row["eval_exact_match"] <= 1.0 and 0.0 <= row["gen_exact_match"] <= 1.0
    # Revisiting a rank gives the same number: switching ranks leaves nothing behind.
    assert small.evaluate_rank(2)["eval_loss"] == pytest.approx(rows[1]["eval_loss"], rel=1e-6)


def test_sweep_rejects_ranks_the_adapter_lacks(sweep, tiny_run):
    with pytest.raises(ValueError, match="outside"):
        sweep.evaluate_rank(tiny_run.cfg.adapter.r_max + 1)
    with pytest.raises(ValueError, match="outside"):
        sweep.evaluate_rank(0)


def test_fixed_rank_adapter_sweeps_its_one_rank(tiny_run, tmp_path):
    # A QLoRA baseline is a plain adapter: the sweep offers just its rank, scored like an export of it.
    fixed = export_rank(tiny_run.adapter_dir, 2, tmp_path / "r2")
    (fixed / "dyrank_adapter.json").unlink(missing_ok=True)
    baseline = RankSweep(tiny_run.base_path, fixed, tiny_run.examples, tokenizer=tiny_run.tokenizer)
    assert list(baseline.ranks) == [2]
    [row] = baseline.sweep()
    plain = evaluate(load_adapter(tiny_run.base_path, fixed), tiny_run.examples, tiny_run.tokenizer, batch_size=8)
    assert row["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)


def test_nf4_sweep_rank_equals_its_export(tiny_run, tmp_path):
    # The same promise on the 4-bit NF4 base the method is for (the adapter was trained in fp32; it loads
    # onto a quantized base all the same, with identical module names).
    quant, rank = QuantSettings(), tiny_run.cfg.adapter.r_max // 2
    nf4 = RankSweep(tiny_run.base_path, tiny_run.adapter_dir, tiny_run.examples, tokenizer=tiny_run.tokenizer, quant=quant)
    swept = nf4.evaluate_rank(rank)
    exported = load_adapter(tiny_run.base_path, export_rank(tiny_run.adapter_dir, rank, tmp_path / "r"), quant=quant)
    plain = evaluate(exported, tiny_run.examples, tiny_run.tokenizer, batch_size=8)
    assert swept["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-4)
