"""Methods in the schema: what each supports, baseline jobs of several methods, `dyrank check` naming the clash."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.config import ConfigError, parse_config
from tests.conftest import TINY_YAML

MINIMAL = {"data": {"dataset": "tiny-qa"}}


def _cfg(**sections):
    return parse_config({**MINIMAL, **sections})


@pytest.mark.parametrize("method", ["galore", "galore8bit", "lora", "dylora", "adalora"])
def test_sixteen_bit_methods_reject_a_4bit_base_naming_both(method):
    with pytest.raises(ConfigError) as info:
        _cfg(adapter={"method": method})
    assert f"adapter.method {method}" in str(info.value) and "quantization.load_in_4bit" in str(info.value)
    _cfg(adapter={"method": method}, quantization={"load_in_4bit": False})


@pytest.mark.parametrize("method", ["adalora", "galore", "lora", "bitlora"])
def test_one_rank_methods_reject_a_rank_sweep_naming_both(method):
    quant = {"load_in_4bit": method == "bitlora"}
    with pytest.raises(ConfigError) as info:
        _cfg(adapter={"method": method, "rank": 8}, quantization=quant, evaluation={"ranks": [2, 4]})
    assert f"adapter.method {method}" in str(info.value) and "evaluation.ranks" in str(info.value)


def test_adalora_schedule_must_leave_a_budgeting_phase():
    with pytest.raises(ConfigError, match=r"adalora.tinit \+ adalora.tfinal .* training.max_steps"):
        _cfg(adapter={"method": "adalora", "adalora": {"tinit": 60, "tfinal": 40}}, quantization={"load_in_4bit": False},
             training={"max_steps": 100})
    with pytest.raises(ConfigError, match="init_r"):
        _cfg(adapter={"method": "adalora", "rank": 16}, quantization={"load_in_4bit": False})


def test_galore_defaults_are_the_papers():
    g = _cfg().adapter.galore
    assert (g.rank, g.update_proj_gap, g.scale) == (128, 200, 0.25)


def test_baseline_jobs_of_several_methods_get_the_base_their_method_needs():
    cfg = _cfg(baselines={"ranks": [4], "methods": [
        {"method": "lora", "rank": 4}, {"method": "adalora", "rank": 2, "adalora": {"init_r": 4}},
        {"method": "bitlora", "rank": 4, "bitlora": {"bits": "1"}}, {"method": "galore", "galore": {"rank": 8}},
        {"method": "lora", "rank": 4, "name": "lora-again", "alpha": 8},
    ]})
    jobs = {job.name: job for job in cfg.baseline_jobs()}
    assert list(jobs) == ["qlora-r4", "lora-r4", "adalora-r2", "bitlora-r4", "galore-r8", "lora-again"]
    assert [(j.method, j.rank) for j in jobs.values()] == [("qlora", 4), ("lora", 4), ("adalora", 2), ("bitlora", 4),
                                                           ("galore", 8), ("lora", 4)]
    assert jobs["qlora-r4"].config.quantization.load_in_4bit is True
    assert jobs["lora-r4"].config.quantization.load_in_4bit is False
    assert jobs["galore-r8"].config.quantization.load_in_4bit is False
    assert jobs["bitlora-r4"].config.quantization.load_in_4bit is True and jobs["bitlora-r4"].config.adapter.bitlora.bits == "1"
    assert jobs["lora-again"].config.adapter.alpha == 8
    assert all(j.config.evaluation.ranks == [j.rank] and not hasattr(j.config, "baselines") for j in jobs.values())


def test_bad_baseline_entries_name_the_entry():
    with pytest.raises(ConfigError, match=r"baselines.methods\[0\] \(lora\): .*rnk.*"):
        _cfg(baselines={"methods": [{"method": "lora", "rnk": 4}]})
    with pytest.raises(ConfigError, match=r"baselines.methods\[0\]: needs a method"):
        _cfg(baselines={"methods": [{"rank": 4}]})
    with pytest.raises(ConfigError, match=r"jobs repeat \['lora-r4'\]"):
        _cfg(baselines={"methods": [{"method": "lora", "rank": 4}, {"method": "lora", "rank": 4}]})
    with pytest.raises(ConfigError, match=r"baselines.methods\[0\] \(adalora\).*tinit"):
        _cfg(training={"max_steps": 10}, baselines={"methods": [{"method": "adalora", "adalora": {"tinit": 10}}]})


def test_check_rejects_an_unsupported_combination_naming_both(capsys):
    assert main(["check", str(TINY_YAML), "--set", "adapter.method=galore"]) == 2
    err = capsys.readouterr().err
    assert "adapter.method galore" in err and "quantization.load_in_4bit" in err
    assert main(["check", str(TINY_YAML), "--set", "adapter.method=adalora", "--set", "quantization.load_in_4bit=false",
                 "--set", "evaluation.ranks=[1,4]", "--set", "adapter.rank=4"]) == 2
    err = capsys.readouterr().err
    assert "adapter.method adalora" in err and "evaluation.ranks" in err
