"""Models by Hub id (`hf:ORG/NAME@REVISION`): resolved from a Hub-layout cache only, and the adapters trained on
them name a portable base that dyrank and plain PEFT both resolve back."""

from __future__ import annotations

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM

from tests.conftest import tiny_job
from tests.support.hub_cache import populate_hub_cache
from trainers.config import ConfigError
from trainers.finetune import train
from trainers.hub import adapter_base_source, portable_base
from trainers.models import build_preset, resolve_base

REPO_ID = "tiny-org/tiny-llama"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = populate_hub_cache(cache, REPO_ID, build_preset("tiny-llama"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache, commit


def test_a_hub_id_resolves_from_the_cache_by_branch_or_commit(hub_cache):
    cache, commit = hub_cache
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    assert resolve_base(f"hf:{REPO_ID}") == snapshot
    assert resolve_base(f"hf:{REPO_ID}@main") == snapshot
    assert resolve_base(f"hf:{REPO_ID}@{commit}") == snapshot


def test_an_uncached_id_is_one_line_naming_it(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"hf:tiny-org/absent@v1 is not in .*hub.*never downloads") as info:
        resolve_base("hf:tiny-org/absent@v1")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="hf:tiny-org/tiny-llama@nope"):
        resolve_base(f"hf:{REPO_ID}@nope")  # cached repo, unknown branch


def test_the_config_checks_hub_id_syntax_not_the_cache():
    assert tiny_job(f"model.source=hf:{REPO_ID}@main").model.source == f"hf:{REPO_ID}@main"
    for bad in ("hf:no-slash", "hf:org/name@", "hf:../x/y"):
        with pytest.raises(ConfigError, match="model.source"):
            tiny_job(f"model.source={bad}")


def test_an_adapter_trained_on_a_hub_model_names_it_portably(hub_cache, tmp_path):
    _, commit = hub_cache
    cfg = tiny_job(f"model.source=hf:{REPO_ID}@main", "quantization.load_in_4bit=false", "training.max_steps=2",
                   "training.gradient_checkpointing=false")
    adapter = train(cfg, tmp_path / "run", progress=False).adapter_dir
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (REPO_ID, commit)  # pinned to the commit
    assert adapter_base_source(adapter) == f"hf:{REPO_ID}@{commit}"
    # plain PEFT resolves the base by itself, from the Hub cache (offline)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter, cache_dir=str(hub_cache[0]), dtype=torch.float32)
    assert model.peft_config["default"].r == cfg.adapter.r_max
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_portable_base_is_never_a_cache_path(tmp_path):
    preset = build_preset("tiny-llama")
    assert portable_base("tiny-llama", preset).name_or_path == "tiny-llama"
    assert portable_base(str(preset)).name_or_path == str(preset)  # a folder the user named is kept as theirs
    assert portable_base("smollm2-135m-instruct").name_or_path == "smollm2-135m-instruct"
