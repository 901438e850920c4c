"""EvalSession scores every rank of one adapter on one loaded base, each rank exactly what its exported plain
PEFT adapter scores, one rank per forward or several (the batched path)."""

from __future__ import annotations

import pytest
from peft import PeftModel

import evaluators.session as session_module
from evaluators.metrics import evaluate
from evaluators.session import EvalSession
from trainers.methods.qdylora import export_rank, get_active_rank
from trainers.models import QuantSettings, load_base_model


def _session(tiny_run, *overrides: str) -> EvalSession:
    cfg = tiny_run.cfg.model_copy(deep=True)
    for override in overrides:
        section, key, value = override.replace("=", ".").split(".")
        setattr(getattr(cfg, section), key, None if value == "None" else int(value))
    session = EvalSession(cfg)
    session.attach_adapter_dir(tiny_run.adapter_dir)
    return session


def _export_loss(tiny_run, session, rank: int, folder, quant=None) -> float:
    exported = PeftModel.from_pretrained(load_base_model(tiny_run.base_path, quant),
                                         str(export_rank(tiny_run.adapter_dir, rank, folder))).eval()
    return evaluate(exported, session.examples["validation"], session.tokenizer, batch_size=8)["eval_loss"]


@pytest.mark.parametrize("ranks_per_forward", [1, 3])
def test_each_rank_equals_its_export(tiny_run, tmp_path, ranks_per_forward):
    # The key promise: scoring rank r in place (slices, or a per-row rank mask with k ranks in one forward)
    # is scoring the standalone rank-r adapter. Four ranks with k=3: one full group and a ragged one.
    session = _session(tiny_run, f"evaluation.ranks_per_forward={ranks_per_forward}")
    r_max = tiny_run.cfg.adapter.r_max
    ranks = [1, r_max // 2, 3, r_max]
    scored = session.score_ranks("validation", ranks)
    assert [s.rank for s in scored] == ranks
    for s in scored:
        assert s.metrics["eval_loss"] == pytest.approx(_export_loss(tiny_run, session, s.rank, tmp_path / f"r{s.rank}"),
                                                       rel=1e-4)
        # per-example values are what the metrics summarize: fidelity metrics and intervals resample them
        assert len(s.per_example["loss_sum"]) == len(session.examples["validation"])
        assert sum(s.per_example["tokens"]) == s.metrics["eval_tokens"]
        assert sum(s.per_example["loss_sum"]) / s.metrics["eval_tokens"] == pytest.approx(s.metrics["eval_loss"])
    # ...and the ranks are really different models, or the comparison above would be vacuous.
    values = sorted(s.metrics["eval_loss"] for s in scored)
    assert all(b - a > 1e-4 * abs(b) for a, b in zip(values, values[1:])), values
    assert get_active_rank(session.model) == r_max  # the batched path leaves the model as it found it


def test_batched_and_one_rank_per_forward_agree_on_every_rank(tiny_run):
    one, batched = _session(tiny_run, "evaluation.ranks_per_forward=1"), _session(tiny_run, "evaluation.ranks_per_forward=8")
    ranks = list(range(1, tiny_run.cfg.adapter.r_max + 1))
    for a, b in zip(one.score_ranks("validation", ranks), batched.score_ranks("validation", ranks)):
        assert b.metrics["eval_loss"] == pytest.approx(a.metrics["eval_loss"], rel=1e-5), a.rank
        assert b.per_example["exact"] == a.per_example["exact"]
        assert b.per_example["loss_sum"] == pytest.approx(a.per_example["loss_sum"], rel=1e-4, abs=1e-5)


def test_session_loads_the_base_once_and_revisits_ranks_exactly(tiny_run, monkeypatch):
    calls = []
    real = session_module.load_base_model
    monkeypatch.setattr(session_module, "load_base_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    session = _session(tiny_run, "evaluation.ranks_per_forward=4")
    ranks = list(range(1, tiny_run.cfg.adapter.r_max + 1))
    rows = session.score_ranks("validation", ranks)
    assert session.base_loads == 1 and len(calls) == 1
    for s in rows:
        assert 0.0 <= s.metrics["eval_exact_match"] <= 1.0
    assert session.score("validation", 2)["eval_loss"] == pytest.approx(rows[1].metrics["eval_loss"], rel=1e-5)


def test_fixed_rank_adapter_scores_like_its_export(tiny_run, tmp_path):
    # A QLoRA baseline is a plain adapter: the session scores it as it is, whatever the ranks_per_forward.
    fixed = export_rank(tiny_run.adapter_dir, 2, tmp_path / "r2")
    (fixed / "dyrank_adapter.json").unlink(missing_ok=True)
    session = EvalSession(tiny_run.cfg)
    session.attach_adapter_dir(fixed)
    [scored] = session.score_ranks("validation", [2])
    assert scored.metrics["eval_loss"] == pytest.approx(_export_loss(tiny_run, session, 2, tmp_path / "again"), rel=1e-6)


def test_nf4_batched_ranks_equal_their_exports(tiny_run, tmp_path):
    # The same promise on the 4-bit NF4 base the method is for, scored without dequantizing it.
    cfg = tiny_run.cfg.model_copy(deep=True)
    cfg.quantization.load_in_4bit, cfg.evaluation.dequantize_base, cfg.evaluation.ranks_per_forward = True, False, 2
    session = EvalSession(cfg)
    session.attach_adapter_dir(tiny_run.adapter_dir)
    ranks = [2, tiny_run.cfg.adapter.r_max // 2]
    for s in session.score_ranks("validation", ranks):
        expected = _export_loss(tiny_run, session, s.rank, tmp_path / f"r{s.rank}", quant=QuantSettings())
        assert s.metrics["eval_loss"] == pytest.approx(expected, rel=1e-3)  # bf16 compute: op order rounds apart


def test_lm_head_sees_only_completion_positions(tiny_run):
    # Prompt tokens are most of a chat sequence: the vocabulary projection must run at completion positions only.
    session = _session(tiny_run, "evaluation.ranks_per_forward=2")
    head = session.model.get_base_model().get_output_embeddings()
    rows = []
    hook = head.register_forward_hook(lambda m, i, out: rows.append(out.reshape(-1, out.shape[-1]).shape[0]))
    try:
        [a, b] = session.score_ranks("validation", [1, 2])
    finally:
        hook.remove()
    assert sum(rows) == a.metrics["eval_tokens"] + b.metrics["eval_tokens"]


def test_ranks_per_forward_is_validated_and_defaults_by_device(tiny_run):
    from tests.conftest import tiny_job
    from trainers.config_base import ConfigError

    with pytest.raises(ConfigError, match=r"evaluation\.ranks_per_forward"):
        tiny_job("evaluation.ranks_per_forward=0")
    session = _session(tiny_run)
    assert tiny_run.cfg.evaluation.ranks_per_forward is None
    assert session.ranks_per_forward() == session_module.RANKS_PER_FORWARD_DEFAULT["cpu"] == 1
