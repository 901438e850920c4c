"""What a pipeline publishes to MLflow as first-class objects, beside its runs and artifacts:
  - its data as run inputs (`log_inputs`: name, digest, source per split), so the UI's Datasets column
    and `mlflow.search_runs` see what each pipeline trained and was scored on;
  - the selected adapter: exported at the selected rank with its model card (`selected_adapter/`), saved as
    a pyfunc model (`selected_model/`) and registered in the Model Registry with the alias `selected`
    and tags rank, method and pipeline_run, so `mlflow.pyfunc.load_model("models:/NAME@selected")` answers.
Everything goes through the Tracker (buffered in the pipeline), like every other write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orchestrator.adapter_card import card_from_run
from orchestrator.adapter_model import save_adapter_model
from orchestrator.tags import REGISTERED_MODEL_TAG
from orchestrator.tracking import Tracker
from trainers.hub import is_hub_id, parse_hub_id

SELECTED_ALIAS = "selected"
SPLITS = ("train", "validation", "test")


def dataset_inputs(data, fingerprints: dict) -> list[dict]:
    """One MLflow dataset per split from the config's data section and `data.SPLIT.{records,sha256}`."""
    if data.dataset and is_hub_id(data.dataset):
        hub = parse_hub_id(data.dataset)
        name, source_type = hub.repo_id, "hugging_face"
        source = {"path": hub.repo_id, "revision": hub.revision, "splits": dict(data.splits) or None}
    elif data.dataset:
        name, source_type, source = data.dataset, "dyrank", {"name": data.dataset}
    else:
        name, source_type = Path(data.train_file).name, "local"
        source = {s: getattr(data, f"{s}_file") for s in SPLITS if getattr(data, f"{s}_file", None)}
    out = []
    for split in SPLITS:
        sha, records = fingerprints.get(f"data.{split}.sha256"), fingerprints.get(f"data.{split}.records")
        if sha is None:
            continue
        out.append({"name": f"{name}:{split}", "digest": sha[:32], "source_type": source_type,
                    "source": json.dumps(source), "context": split,
                    "profile": json.dumps({"num_rows": records, "sha256": sha})})
    return out


def registered_name(cfg) -> str:
    """The Model Registry name of a pipeline's selected adapter: its experiment's name."""
    return cfg.tracking.experiment or cfg.name


def publish_selected(tracker: Tracker, parent_id: str, cfg, workdir: Path, rank: int) -> None:
    """Export the selected rank with its card, log it, and register it as a pyfunc model (once per pipeline:
    a resumed pipeline that already registered it does nothing)."""
    from trainers.export import export_adapter

    parent = tracker.run(parent_id)  # after a flush: every earlier write, the summary metrics included
    if REGISTERED_MODEL_TAG in parent.data.tags:
        return
    adapter = workdir / "adapter"
    if not adapter.is_dir():  # resumed after training: the adapter is in MLflow
        adapter = tracker.download(parent_id, "adapter", workdir / "downloaded")
    config = adapter / "adapter_config.json"
    if not config.is_file() or json.loads(config.read_text()).get("peft_type") != "LORA":
        return  # full weights (GaLore) or AdaLoRA: no rank-sliced LoRA export to publish
    for scratch in ("selected", "selected_model"):  # a resume after a crash mid-publish makes them again
        shutil.rmtree(workdir / scratch, ignore_errors=True)
    out = export_adapter(adapter, rank, workdir / "selected" / f"{cfg.name}-r{rank}", card=lambda read, folder, name:
                         card_from_run(tracker, parent_id, read, rank, folder, cfg.to_yaml(), out_name=name))
    tracker.log_artifact(parent_id, out, "selected_adapter")
    model_dir = save_adapter_model(out, workdir / "selected_model")
    tracker.register_model(parent_id, model_dir, "selected_model", registered_name(cfg), SELECTED_ALIAS,
                           {"rank": rank, "method": cfg.adapter.method, "pipeline_run": parent.info.run_id})
