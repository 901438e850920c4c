"""The selected adapter as MLflow users use it: a registered pyfunc model (alias `selected`, tags rank, method,
pipeline run) that answers offline, an exported folder with its model card, and the data sets as run inputs;
all written through the buffered tracker. (The Ray pipeline calls the same functions: test_pipeline.py.)"""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel

from evaluators.metrics import generate_answers
from orchestrator.buffered_tracking import BufferedTracker
from orchestrator.mlflow_assets import dataset_inputs, publish_selected
from orchestrator.tracking import MlflowTracker
from tests.conftest import tiny_config
from trainers.datasets.splits import load_splits, split_fingerprint
from trainers.finetune import train
from trainers.models import load_base_model, load_tokenizer, resolve_base

SELECTED = 3
QUESTIONS = ["What is 2 + 3?", "Spell cat backwards."]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A trained tiny adapter and a pipeline-like parent run (eval children, summary metrics, config), published."""
    folder = tmp_path_factory.mktemp("assets")
    cfg = tiny_config("quantization.load_in_4bit=false", "training.max_steps=6", "training.lr=0.01",
                      "training.gradient_checkpointing=false")
    workdir = folder / "work"
    shutil.copytree(train(cfg.job(), folder / "train", progress=False).adapter_dir, workdir / "adapter")
    uri = f"sqlite:///{folder}/mlflow.db"
    store = MlflowTracker(uri)
    splits = load_splits(cfg.data)
    fingerprints = {f"data.{s}.{k}": v for s, recs in splits.items() for k, v in split_fingerprint(recs).items()}
    parent = store.create_run(store.experiment_id(cfg.name), "pipeline", cfg.name,
                              params={**cfg.model_dump(mode="json"), **fingerprints})
    store.log_text(parent, cfg.to_yaml(), "config.yaml")
    for rank in range(1, 9):
        child = store.create_run(store.experiment_id(cfg.name), "eval", f"rank-{rank}", parent, params={"rank": rank})
        store.log_metrics(child, {"eval_loss": 5.0 + abs(rank - SELECTED) / 10})
    store.log_metrics(parent, {"best_rank": SELECTED, "best_eval_loss": 5.0, "selected_test_loss": 5.2,
                               "selected_test_loss_ci_low": 5.1, "selected_test_loss_ci_high": 5.3})
    buffered = BufferedTracker(store, max_outage_seconds=5)
    try:
        buffered.log_inputs(parent, dataset_inputs(cfg.data, fingerprints))
        publish_selected(buffered, parent, cfg, workdir, SELECTED)
        publish_selected(buffered, parent, cfg, workdir, SELECTED)  # a resumed pipeline: nothing twice
    finally:
        buffered.close()
    return cfg, uri, parent, workdir, fingerprints


def test_the_selected_adapter_is_registered_with_alias_and_tags(published):
    cfg, uri, parent, _, _ = published
    client = MlflowClient(uri)
    versions = client.search_model_versions(f"name = '{cfg.name}'")
    assert len(versions) == 1  # published twice, registered once
    version = client.get_model_version_by_alias(cfg.name, "selected")
    assert version.tags == {"rank": str(SELECTED), "method": "qdylora", "pipeline_run": parent}
    assert version.run_id == parent
    assert client.get_run(parent).data.tags["dyrank.registered_model"] == f"{cfg.name}/{version.version}"


def test_the_registered_model_answers_offline_like_the_exported_adapter(published, monkeypatch):
    cfg, uri, _, workdir, _ = published
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.name}@selected")
    answers = model.predict(QUESTIONS)
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    exported = next((workdir / "selected").iterdir())
    base_dir = resolve_base("tiny-llama")
    base = load_base_model(base_dir, dtype=torch.float32, device=torch.device("cpu"))
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    untouched = base(input_ids=ids).logits
    plain = PeftModel.from_pretrained(base, exported).eval()
    expected = generate_answers(plain, [{"prompt": q, "completion": ""} for q in QUESTIONS], load_tokenizer(base_dir), 32)
    assert answers == expected
    # the same weights, not merely the same (possibly empty) text: the base through its portable id, the adapter on it
    loaded = model.unwrap_python_model().model
    torch.testing.assert_close(loaded(input_ids=ids).logits, plain(input_ids=ids).logits, atol=0, rtol=0)
    assert not torch.allclose(plain(input_ids=ids).logits, untouched), "the adapter must change the outputs"


def test_the_exported_selected_adapter_carries_its_model_card(published, tmp_path):
    _, uri, parent, _, fingerprints = published
    folder = MlflowClient(uri).download_artifacts(parent, "selected_adapter", str(tmp_path))
    config = json.loads(open(f"{folder}/adapter_config.json").read())
    assert config["r"] == SELECTED and config["base_model_name_or_path"] == "tiny-llama"
    card = open(f"{folder}/README.md").read()
    header = card.split("---")[1]
    assert "base_model: tiny-llama" in header and "library_name: peft" in header
    assert "base_model:adapter:tiny-llama" in header and "- qdylora" in header
    assert f"| rank | {SELECTED} |" in card and "| alpha | 16 (scaling alpha / rank = 5.33333) |" in card
    assert f"Rank {SELECTED} was selected by policy `best` on validation `eval_loss`" in card
    assert f"| **{SELECTED}** | 5.0000 |" in card and "| 8 | 5.5000 |" in card  # the sweep it was chosen from
    assert "| test | loss | 5.2000 | 5.1000 - 5.3000 |" in card
    for split in ("train", "validation", "test"):
        assert f"| {split} | {fingerprints[f'data.{split}.records']} | `{fingerprints[f'data.{split}.sha256']}` |" in card
    assert f"MLflow pipeline run: {parent}" in card and "dyrank run config.yaml" in card
    assert f"dyrank export PIPELINE_RUN_ID --rank {SELECTED}" in card and "name: tiny" in card  # the config itself


def test_the_data_sets_are_run_inputs_with_name_digest_and_source(published):
    _, uri, parent, _, fingerprints = published
    inputs = MlflowClient(uri).get_run(parent).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(by_context) == ["test", "train", "validation"]
    for split, dataset in by_context.items():
        assert dataset.name == f"tiny-qa:{split}" and dataset.source_type == "dyrank"
        assert dataset.digest == fingerprints[f"data.{split}.sha256"][:32]
        assert json.loads(dataset.profile)["num_rows"] == fingerprints[f"data.{split}.records"]
