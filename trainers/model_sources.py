"""Light checks of a model source, without torch: what `model.source` names must be loadable, and how large a
LoRA rank its layers can use. trainers/models.py loads what passes; the config schema and `dyrank check` call
these so a bad source is refused before anything is built or started.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers import model_registry as registry
from trainers.presets import PRESETS

GGUF_MAGIC = b"GGUF"
# Llama-style blocks (Llama, Mistral, Qwen2/3, SmolLM2): each projection's (in, out) from the config.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")


def check_local_source(path: Path) -> None:
    """A file must be a GGUF file (by its magic bytes, not only its name); a folder must hold a readable
    config.json. A ValueError names the file at fault."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; give a .gguf file or a Hugging Face model folder")
        with path.open("rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        return
    if path.is_dir():
        read_model_config(path)
        return
    raise ValueError(f"{path} is neither a file nor a folder")


def read_model_config(folder: Path) -> dict:
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"model folder has no config.json: {folder}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{config} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config}: expected a JSON object, got {type(data).__name__}")
    return data


def _architecture(source: str) -> dict | None:
    """The config keys of a preset or of a local folder; None where it is not known without building it
    (a registered model before it is converted, a GGUF file)."""
    if source in PRESETS:
        return {"model_type": "llama", **PRESETS[source]}
    path = Path(source)
    if path.is_dir():
        try:
            return read_model_config(path)
        except ValueError:
            return None
    return None


def layer_shapes(source: str) -> dict[str, tuple[int, int]] | None:
    """(in_features, out_features) of each kind of linear layer in the blocks, for Llama-style models; None
    when the architecture is not one whose layers are known without loading it."""
    config = _architecture(source)
    if not config or config.get("model_type") not in LLAMA_LIKE:
        return None
    try:
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
            "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def max_useful_rank(source: str, target_modules) -> tuple[int, list[str]] | None:
    """(the largest rank any targeted layer can use, the targeted layer kinds), or None when unknown.
    A rank above min(in, out) of every targeted layer adds parameters and memory that no layer can use.
    A ValueError when `target_modules` matches no linear layer of the blocks."""
    shapes = layer_shapes(source)
    if shapes is None:
        return None
    names = list(shapes) if target_modules == "all-linear" else [  # PEFT matches a module name or its dotted tail
        n for n in shapes if any(t == n or t.endswith("." + n) for t in target_modules)]
    if not names:
        raise ValueError(f"matches no linear layer of the model's blocks; they are {', '.join(shapes)}")
    return max(min(shapes[n]) for n in names), names


def check_available(source: str) -> str:
    """What `dyrank check` says about the model beyond the schema: a registered model must have been fetched
    (nothing is downloaded by a check). Returns a short description; a ValueError says how to fetch it."""
    if source in PRESETS:
        return f"preset {source} (built once, on first use)"
    if source in registry.REGISTERED_MODELS:
        path = registry.model_file(source)
        if not path.is_file():
            raise ValueError(f"registered model {source} is not fetched; run: dyrank models fetch {source}")
        return f"registered model {source}: {path}"
    check_local_source(Path(source))
    return f"local model {source}"
