"""A method defined only in this file (rank-stabilised LoRA, PEFT's use_rslora) passes `dyrank check`, `dyrank plan`,
a training through the recipe and scoring through EvalSession, with no edit anywhere else: one registration is all
a method needs."""

from __future__ import annotations

import json
import math
from typing import Literal

import pytest
from pydantic import Field

from orchestrator.cli import main
from tests.conftest import PIPELINE_SECTIONS, TINY_YAML
from trainers.adapters import attach_lora, lora_layers
from trainers.config import load_job_config
from trainers.config_base import Section
from trainers.methods import MethodSpec, register_method, unregister_method
from trainers.methods.base import TrainingMethod


# ---- the whole method: options, training code, registration --------------------------------------------------
class RsLoraOptions(Section):
    init: Literal["gaussian", "default"] = Field("default", description="PEFT's init_lora_weights for A.")


class RsLoraMethod(TrainingMethod):
    def attach(self, base, job):
        a = job.adapter
        return attach_lora(base, rank=a.rank, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules,
                           gradient_checkpointing=job.training.gradient_checkpointing, use_rslora=True,
                           init_lora_weights=True if a.rslora.init == "default" else "gaussian")


SPEC = MethodSpec(name="rslora", summary="LoRA scaled by alpha / sqrt(rank)", trainer=RsLoraMethod,
                  options_key="rslora", options=RsLoraOptions)
# ------------------------------------------------------------------------------------------------------------------

OVERRIDES = ["adapter.method=rslora", "adapter.rank=4", "adapter.rslora.init=gaussian", "training.max_steps=3",
             "training.gradient_checkpointing=false", "baselines.ranks=[2]", "evaluation.max_samples=8"]


@pytest.fixture
def rslora():
    register_method(SPEC)
    yield SPEC
    unregister_method(SPEC.name)


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def test_check_and_plan_accept_it(rslora, capsys):
    assert main(["check", str(TINY_YAML), *_sets(OVERRIDES)]) == 0
    out, err = capsys.readouterr()
    assert "method: rslora" in out and "init: gaussian" in out and "OK (rslora, ranks 4..4)" in err
    assert main(["plan", str(TINY_YAML), *_sets(OVERRIDES)]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("trainer ")}
    assert set(rows) == {"rslora", "qlora-r2"}


def test_its_options_validate_themselves(rslora, capsys):
    assert main(["check", str(TINY_YAML), *_sets([*OVERRIDES, "adapter.rslora.init=uniform"])]) == 2
    assert "adapter.rslora.init: Input should be 'gaussian' or 'default'" in capsys.readouterr().err
    assert main(["check", str(TINY_YAML), *_sets([*OVERRIDES, "adapter.rslora.scale=2"])]) == 2
    assert "adapter.rslora.scale: unknown key" in capsys.readouterr().err


def test_unregistered_it_is_unknown(capsys):
    assert main(["check", str(TINY_YAML), *_sets(OVERRIDES)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'rslora'" in err or "adapter.rslora: unknown key" in err


def test_it_trains_through_the_recipe_and_scores_through_eval_session(rslora, tmp_path):
    from evaluators.session import EvalSession
    from trainers.finetune import train

    job = load_job_config(TINY_YAML, OVERRIDES, ignore_sections=PIPELINE_SECTIONS)
    result = train(job, tmp_path / "run", progress=False)
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and saved["r"] == 4 and saved["init_lora_weights"] == "gaussian"
    assert json.loads((result.adapter_dir / "dyrank_adapter.json").read_text())["method"] == "rslora"

    session = EvalSession(job)
    session.attach_adapter_dir(result.adapter_dir)
    layer = next(lora_layers(session.model))
    assert layer.scaling["default"] == pytest.approx(job.adapter.alpha / math.sqrt(4))  # rsLoRA's, not alpha / r
    scores = session.score("validation", rank=4)
    base = session.score("validation", rank=None)
    assert math.isfinite(scores["eval_loss"]) and scores["eval_loss"] != base["eval_loss"]
