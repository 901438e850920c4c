"""The one export: a standard PEFT adapter of one rank from a dyrank adapter folder (or a train folder holding
one), for `dyrank export` and every other caller. The source is checked file by file first (a broken JSON or a
0-byte or truncated safetensors file is named), the output folder follows trainers/out_dir.py (never the source,
never a non-empty folder without `force`) and is written through a temporary folder and a rename.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trainers.adapters import ADAPTER_WEIGHTS
from trainers.methods.base import ADAPTER_META
from trainers.out_dir import check_out_dir, staged

ADAPTER_CONFIG = "adapter_config.json"

if TYPE_CHECKING:
    from trainers.model_card import ModelCardFacts


def find_adapter(source: str | Path) -> Path:
    """The adapter folder of `source`: the folder itself, or its `adapter/` (a dyrank train folder)."""
    source = Path(source)
    adapter = source / "adapter" if (source / "adapter").is_dir() else source
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{source}: no adapter found (expected a dyrank train folder or an adapter folder "
                         f"with {ADAPTER_CONFIG})")
    return adapter


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_adapter(adapter: Path) -> None:
    """Every file an export reads, readable: the PEFT config, dyrank's meta (if any), the weights (header and
    size: safetensors checks that the tensors fit the file)."""
    from safetensors import SafetensorError, safe_open

    config = _json_object(adapter / ADAPTER_CONFIG)
    if not isinstance(config.get("r"), int) or config.get("peft_type") not in (None, "LORA", "ADALORA"):
        raise ValueError(f"{adapter / ADAPTER_CONFIG}: not a LoRA adapter config (r {config.get('r')!r}, "
                         f"peft_type {config.get('peft_type')!r})")
    if (adapter / ADAPTER_META).exists():
        meta = _json_object(adapter / ADAPTER_META)
        if meta.get("dynamic") and not isinstance(meta.get("r_max"), int):
            raise ValueError(f"{adapter / ADAPTER_META}: r_max missing or not a whole number")
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{weights}: missing")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():
                fh.get_slice(key)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights}: not a readable safetensors file ({exc})") from None


CardBuilder = Callable[[Path, Path, str], "ModelCardFacts"]  # (adapter read, folder written, its final name)


def export_adapter(source_dir: str | Path, rank: int, out_dir: str | Path, force: bool = False,
                   card: CardBuilder | None = None) -> Path:
    """A standard PEFT adapter of rank `rank` in `out_dir` (created; refused if non-empty unless `force`), with
    its model card (README.md): what the adapter folder knows, or the facts `card` builds (the caller that knows
    the run: selection evidence, metrics, data, provenance)."""
    from trainers.methods.qdylora import export_rank
    from trainers.model_card import finish_export

    adapter = find_adapter(source_dir)
    check_adapter(adapter)
    out = check_out_dir(out_dir, force=force, source=adapter)  # the folder read: never written over
    with staged(out) as tmp:
        export_rank(adapter, rank, tmp)
        finish_export(tmp, rank, card(adapter, tmp, out.name) if card else None)
    return out
