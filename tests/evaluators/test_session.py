"""The evaluators' session: one base load, adapters attached later, the NF4 base dequantized once."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest

from evaluators.session import EvalSession
from tests.conftest import tiny_job


def _has_4bit(model) -> bool:
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_dequantized_base_scores_the_same_weights_without_4bit_layers():
    quantized = EvalSession(tiny_job("evaluation.dequantize_base=false"))
    dequantized = EvalSession(tiny_job("evaluation.dequantize_base=true"))
    assert _has_4bit(quantized.model) and not _has_4bit(dequantized.model)
    a = quantized.score("validation", rank=None)["eval_loss"]
    b = dequantized.score("validation", rank=None)["eval_loss"]
    # the same NF4 values; only bf16 matmul rounding differs
    assert b == pytest.approx(a, rel=1e-3)
    assert dequantized.base_loads == 1


def test_test_scores_carry_intervals_around_the_estimate():
    session = EvalSession(tiny_job("evaluation.bootstrap_samples=200"))
    row = session.score("test", rank=None, generate=True, intervals=True)
    for metric in ("test_loss", "test_exact_match", "test_gen_exact_match"):
        assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], metric
    assert row["test_loss_ci_low"] < row["test_loss_ci_high"]
