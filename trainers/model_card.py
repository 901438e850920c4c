"""A model card for every exported adapter: `README.md` in the Hub's PEFT format, so the folder can be shared
as is (`hf upload`, or plain copying) and says what it is.

The YAML header is what the Hub reads (`base_model`, `library_name: peft`, `pipeline_tag`, tags with the
`base_model:adapter:` link); the body holds the facts a reader needs to trust and reproduce it: rank, alpha,
method, the evidence the rank was selected on, the metrics with their 95 % intervals, the data (sizes and
content hashes), provenance, and the commands that reproduce it. `adapter_card` gathers what the adapter
folder itself knows; callers add what only they know (the selection, the metrics, the data, the command).
No torch, MLflow or orchestrator import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainers.methods.base import read_adapter_meta

CARD_FILE = "README.md"


@dataclass
class ModelCardFacts:
    base_model: str  # the portable id from adapter_config.json (Hub id, registered id, preset or user path)
    base_revision: str | None
    method: str
    rank: int
    alpha: float
    trained_ranks: tuple[int, int] | None = None  # (r_min, r_max) of a rank-switchable adapter
    target_modules: list[str] | str = "all-linear"
    selection: dict | None = None  # {"policy", "metric", "selected", "ranks": {rank: value}, ...}
    metrics: list[dict] = field(default_factory=list)  # {"split", "name", "value", "ci_low", "ci_high"}
    data: dict = field(default_factory=dict)  # {"source": ..., "splits": {split: {"records", "sha256"}}}
    provenance: dict = field(default_factory=dict)  # versions, commit, device, run ids
    commands: list[str] = field(default_factory=list)  # what reproduces it, in order
    config_yaml: str | None = None  # the resolved config it was trained with
    title: str | None = None
    tags: list[str] = field(default_factory=list)


def adapter_card(adapter_dir: str | Path, rank: int, exported_dir: str | Path | None = None, **facts) -> ModelCardFacts:
    """The facts an adapter folder holds (its base, method, alpha, target modules, trained rank range; the
    PEFT config read from `exported_dir` where given), plus `facts` (selection, metrics, data, provenance,
    commands, config_yaml, title, tags)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((Path(exported_dir or adapter_dir) / "adapter_config.json").read_text())
    meta = read_adapter_meta(adapter_dir) or {}
    dynamic = bool(meta.get("dynamic"))
    return ModelCardFacts(
        base_model=config.get("base_model_name_or_path") or "unknown", base_revision=config.get("revision"),
        method=meta.get("method", "lora"), rank=rank, alpha=float(meta.get("lora_alpha", config.get("lora_alpha"))),
        trained_ranks=(meta["r_min"], meta["r_max"]) if dynamic else None,
        target_modules=config.get("target_modules") or "all-linear", **facts,
    )


def write_model_card(out_dir: str | Path, card: ModelCardFacts) -> Path:
    """Write `out_dir/README.md`, the folder's card (in an export folder, in place of PEFT's template)."""
    path = Path(out_dir) / CARD_FILE
    path.write_text(render(card))
    return path


def finish_export(out_dir: str | Path, rank: int, card: ModelCardFacts | None = None) -> Path:
    """The last step of every export: its model card (at least what the adapter folder knows). The one
    export function (trainers/export.py, export_adapter) calls this; callers that know more pass `card`."""
    return write_model_card(out_dir, card or adapter_card(out_dir, rank))


def render(card: ModelCardFacts) -> str:
    header = {
        "base_model": card.base_model,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": sorted({f"base_model:adapter:{card.base_model}", "lora", card.method, "dyrank", "transformers",
                        *card.tags}),
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# {card.title or f'{card.method} adapter, rank {card.rank}'}", "",
             f"A rank-{card.rank} LoRA adapter (PEFT) for `{card.base_model}`"
             + (f" at revision `{card.base_revision}`" if card.base_revision else "") + f", trained with dyrank's "
             f"`{card.method}`" + (f" (one adapter trained for every rank {card.trained_ranks[0]}..{card.trained_ranks[1]}, "
                                   f"exported at rank {card.rank})" if card.trained_ranks else "") + ".", "",
             "| | |", "| --- | --- |", f"| rank | {card.rank} |", f"| alpha | {card.alpha:g} (scaling alpha / rank = "
             f"{card.alpha / card.rank:g}) |", f"| method | {card.method} |",
             f"| target modules | {_modules(card.target_modules)} |", ""]
    lines += _selection(card.selection) + _metrics(card.metrics) + _data(card.data) + _usage(card)
    lines += _reproduce(card) + _provenance(card.provenance)
    return "\n".join(lines).rstrip() + "\n"


def _modules(modules) -> str:
    """Module kinds (PEFT may save every full module name): `q_proj, v_proj (28 modules)`."""
    if isinstance(modules, str):
        return modules
    kinds = sorted({name.rsplit(".", 1)[-1] for name in modules})
    return ", ".join(kinds) + (f" ({len(modules)} modules)" if len(modules) > len(kinds) else "")


def _selection(selection: dict | None) -> list[str]:
    if not selection:
        return ["## Selection", "", "None: this rank was chosen by whoever exported it, not by a rank sweep.", ""]
    metric = selection["metric"]
    out = ["## Selection", "", f"Rank {selection['selected']} was selected by policy `{selection['policy']}` on "
           f"validation `{metric}`" + (f" (tolerance {selection['tolerance']:g})" if selection.get("tolerance") else "")
           + f", out of {len(selection['ranks'])} ranks scored from the same adapter:", "",
           f"| rank | {metric} |", "| ---: | ---: |"]
    out += [f"| {'**' + str(r) + '**' if r == selection['selected'] else r} | {v:.4f} |"
            for r, v in sorted(selection["ranks"].items())]
    for label, value in selection.get("compared", {}).items():
        out.append(f"\n{label}: {value}")
    return out + [""]


def _metrics(metrics: list[dict]) -> list[str]:
    if not metrics:
        return []
    out = ["## Metrics", "", "| split | metric | value | 95 % interval |", "| --- | --- | ---: | --- |"]
    for m in metrics:
        ci = f"{m['ci_low']:.4f} - {m['ci_high']:.4f}" if m.get("ci_low") is not None else ""
        out.append(f"| {m['split']} | {m['name']} | {m['value']:.4f} | {ci} |")
    return out + ["", "Intervals are bootstrap 95 % intervals over the split's examples.", ""]


def _data(data: dict) -> list[str]:
    if not data:
        return []
    out = ["## Data", "", f"Source: `{data.get('source', 'unknown')}`.", "", "| split | records | sha256 |",
           "| --- | ---: | --- |"]
    out += [f"| {name} | {s['records']} | `{s['sha256']}` |" for name, s in data.get("splits", {}).items()]
    return out + ["", "The hash is over the records as dyrank read them (one sorted-key JSON object a line).", ""]


def _usage(card: ModelCardFacts) -> list[str]:
    out = ["## Use", "", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", ""]
    if card.base_revision:  # a Hub id: transformers fetches (or finds in its cache) the same commit
        out.append(f"base = AutoModelForCausalLM.from_pretrained(\"{card.base_model}\", revision=\"{card.base_revision}\")")
    else:  # a dyrank preset or registered id, or a local path: dyrank resolves it to a folder
        out += ["from trainers.models import resolve_base  # dyrank", "",
                f"base = AutoModelForCausalLM.from_pretrained(resolve_base(\"{card.base_model}\"))"]
    return out + ["model = PeftModel.from_pretrained(base, \"path/to/this/folder\")", "```", ""]


def _reproduce(card: ModelCardFacts) -> list[str]:
    out = []
    if card.commands:
        out += ["## Reproduce", "", "```bash", *card.commands, "```", ""]
    if card.config_yaml:
        out += ["<details><summary>config.yaml</summary>", "", "```yaml", card.config_yaml.rstrip(), "```", "",
                "</details>", ""]
    return out


def _provenance(provenance: dict) -> list[str]:
    if not provenance:
        return []
    return ["## Provenance", "", *[f"- {k}: {v}" for k, v in sorted(provenance.items())], ""]
