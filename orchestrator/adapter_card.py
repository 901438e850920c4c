"""The facts on an exported adapter's model card that only the driver knows: from a pipeline's MLflow run
(selection evidence, metrics with intervals, data fingerprints, provenance, config) or from a `dyrank train`
folder (its config and data). `trainers.model_card` renders them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.tags import BEST_BASELINE_TAG, PROVENANCE_PREFIX
from orchestrator.tracking import Tracker
from trainers.hub import repair_portable_base
from trainers.model_card import ModelCardFacts, adapter_card

SPLITS = ("train", "validation", "test")


def card_from_run(tracker: Tracker, parent_id: str, adapter_dir: Path, rank: int, out_dir: Path,
                  config_yaml: str | None = None, out_name: str | None = None) -> ModelCardFacts:
    """A pipeline run's card for `adapter_dir` exported at `rank` (read back through the tracker; the run's
    config.yaml is downloaded unless the caller has it)."""
    parent = tracker.run(parent_id)
    params, metrics, tags = parent.data.params, parent.data.metrics, parent.data.tags
    metric = params.get("selection.metric", "eval_loss")
    swept = {int(r.data.params["rank"]): r.data.metrics[metric] for r in tracker.children(parent_id, "eval")
             if metric in r.data.metrics and "rank" in r.data.params}
    selected = int(metrics["best_rank"]) if "best_rank" in metrics else None
    selection = None
    if selected == rank and swept:
        compared = {}
        if f"best_baseline_{metric}" in metrics:
            compared[f"Best baseline ({tags.get(BEST_BASELINE_TAG, '?')}), validation {metric}"] = \
                f"{metrics[f'best_baseline_{metric}']:.4f}"
        if f"zeroshot_{metric}" in metrics:
            compared[f"Base model zero-shot, validation {metric}"] = f"{metrics[f'zeroshot_{metric}']:.4f}"
        tolerance = float(params.get("selection.tolerance", 0) or 0) if params.get("selection.policy") != "best" else 0
        selection = {"policy": params.get("selection.policy", "?"), "metric": metric, "selected": selected,
                     "ranks": swept, "tolerance": tolerance, "compared": compared}
    scored = [{"split": "validation", "name": metric, "value": swept[rank]}] if rank in swept else []
    if selected == rank:
        scored += interval_metrics(metrics, "selected_test_", "test")
    if config_yaml is None:
        with tempfile.TemporaryDirectory() as tmp:
            config_yaml = Path(tracker.download(parent_id, "config.yaml", tmp)).read_text()
    if "model.source" in params:  # an adapter from before portable bases: name the config's source
        repair_portable_base(out_dir, params["model.source"])
    return adapter_card(
        adapter_dir, rank, out_dir, selection=selection, metrics=scored, data=data_facts(params),
        provenance={**{k[len(PROVENANCE_PREFIX):]: v for k, v in tags.items() if k.startswith(PROVENANCE_PREFIX)},
                    "MLflow pipeline run": parent_id},
        commands=["dyrank run config.yaml   # the config below", f"dyrank export PIPELINE_RUN_ID --rank {rank} --out {out_name or out_dir.name}"],
        config_yaml=config_yaml, title=f"{params.get('name', 'dyrank')}: {params.get('adapter.method', '')} adapter, rank {rank}",
        tags=["dyrank-selected"] if selected == rank else [],
    )


def card_from_train_folder(folder: Path, adapter_dir: Path, rank: int, out_dir: Path,
                           out_name: str | None = None) -> ModelCardFacts:
    """A `dyrank train` folder's card: its config and the data it read; no selection (the user chose the rank)."""
    from orchestrator.config import load_config
    from orchestrator.provenance import provenance_tags
    from trainers.datasets.splits import load_splits, split_fingerprint

    config_path = folder / "config.yaml"
    facts = {}
    if config_path.is_file():
        cfg = load_config(config_path)
        repair_portable_base(out_dir, cfg.model.source)  # an adapter from before portable bases
        splits = load_splits(cfg.data)
        facts = {"data": {"source": cfg.data.dataset or cfg.data.train_file,
                          "splits": {name: split_fingerprint(splits[name]) for name in SPLITS}},
                 "config_yaml": config_path.read_text(),
                 "commands": [f"dyrank train config.yaml --out {folder.name}   # the config below",
                              f"dyrank export {folder.name} --rank {rank} --out {out_name or out_dir.name}"]}
    tags = provenance_tags()
    return adapter_card(adapter_dir, rank, out_dir, provenance={k[len(PROVENANCE_PREFIX):]: v for k, v in tags.items()},
                        **facts)


def interval_metrics(metrics: dict, prefix: str, split: str) -> list[dict]:
    """{prefix}X with {prefix}X_ci_low / _ci_high -> card rows (counts such as *_examples left out)."""
    rows = []
    for key in sorted(metrics):
        name = key[len(prefix):]
        if key.startswith(prefix) and not name.endswith(("_ci_low", "_ci_high")) and name not in ("examples", "tokens"):
            rows.append({"split": split, "name": name, "value": metrics[key],
                         "ci_low": metrics.get(f"{key}_ci_low"), "ci_high": metrics.get(f"{key}_ci_high")})
    return rows


def data_facts(params: dict) -> dict:
    """The data source and each split's size and hash, from a pipeline run's params."""
    source = next((params[k] for k in ("data.dataset", "data.train_file") if params.get(k) not in (None, "None")), "?")
    splits = {s: {"records": int(params[f"data.{s}.records"]), "sha256": params[f"data.{s}.sha256"]}
              for s in SPLITS if f"data.{s}.records" in params}
    return {"source": source, "splits": splits}


def export_card(source: str, adapter_dir: Path, rank: int, out_dir: Path, tracking_uri: str | None = None,
                out_name: str | None = None) -> ModelCardFacts:
    """The card for `dyrank export SOURCE`: SOURCE a train folder (or an adapter folder) or a pipeline run id."""
    path = Path(source)
    if path.exists():
        folder = path if (path / "config.yaml").is_file() else Path(adapter_dir).parent
        return card_from_train_folder(folder, adapter_dir, rank, Path(out_dir), out_name)
    from orchestrator.tracking import PARENT_TAG, open_run

    tracker, run = open_run(source, tracking_uri)
    return card_from_run(tracker, run.data.tags.get(PARENT_TAG, source), adapter_dir, rank, Path(out_dir),
                         out_name=out_name)
