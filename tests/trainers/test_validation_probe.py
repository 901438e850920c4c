"""training.eval_every: r_min, the middle and r_max scored on a validation subset every N steps, as series."""

from __future__ import annotations

import json

import pytest

from evaluators.session import EvalSession
from tests.conftest import tiny_job
from trainers.finetune import train
from trainers.methods import get_spec
from trainers.validation_probe import probe_ranks

FAST = ("quantization.load_in_4bit=false", "training.max_steps=4", "training.gradient_checkpointing=false",
        "training.lr=0.01", "training.eval_every=2", "training.eval_samples=8", "evaluation.max_samples=8")


def test_probes_every_n_steps_at_three_ranks_and_equal_the_evaluator_on_the_final_weights(tmp_path):
    cfg = tiny_job(*FAST)
    result = train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probed = {row["step"]: {k: v for k, v in row.items() if k.startswith("val_loss_r")} for row in rows}
    assert {step for step, values in probed.items() if values} == {2, 4}
    assert set(probed[4]) == {"val_loss_r1", "val_loss_r4", "val_loss_r8"}  # r_min, (1 + 8) // 2, r_max
    session = EvalSession(cfg)  # the same 8 validation examples, the saved (final, step 4) adapter
    session.attach_adapter_dir(result.adapter_dir)
    for rank in (1, 4, 8):
        assert probed[4][f"val_loss_r{rank}"] == pytest.approx(session.score("validation", rank)["eval_loss"], rel=1e-5)
    assert probed[2]["val_loss_r8"] != probed[4]["val_loss_r8"]  # scored on the weights of its own step


def test_fixed_rank_methods_probe_their_one_rank():
    assert probe_ranks(tiny_job("adapter.method=qlora", "adapter.rank=2", "evaluation.ranks=[2]").adapter) == [2]
    svd = tiny_job("adapter.method=qlora-svd", "adapter.r_max=4").adapter
    assert get_spec("qlora-svd").rank_dynamic and probe_ranks(svd) == [4]  # it trains plainly at r_max


def test_eval_every_is_off_by_default_and_refuses_negatives():
    from trainers.config_base import ConfigError

    assert tiny_job().training.eval_every == 0
    with pytest.raises(ConfigError, match="training.eval_every"):
        tiny_job("training.eval_every=-1")
