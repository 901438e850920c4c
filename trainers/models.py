"""Base models: resolve a source to a plain Hugging Face folder, then load it (optionally NF4-quantized).

Sources are a built-in preset (a tiny random Llama for tests, built from a config with a fixed seed and
saved once to the cache), a local Hugging Face folder, or a GGUF file (dequantized once and cached as a
plain folder). Every load goes through `from_pretrained(folder)`, so PEFT adapters can name the exact
base they were trained on in `base_model_name_or_path`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from trainers import hub, model_registry as registry
from trainers.model_sources import check_local_source
from trainers.paths import cache_dir, sha256_file
from trainers.presets import PRESETS

# No hub access, ever: everything loads from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
_PRESET_VERSION = 1  # bump when a preset's recipe changes, so caches rebuild
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class QuantSettings:
    """QLoRA's base quantization (bitsandbytes): NF4, double quantization, a compute dtype."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"


def base_dtype(cfg) -> torch.dtype | None:
    """The dtype an unquantized base loads in (None for a 4-bit base: the compute dtype decides)."""
    q = cfg.quantization
    return None if q.load_in_4bit else resolve_compute_dtype(q.compute_dtype if q.base_dtype == "auto" else q.base_dtype)


def quant_settings(cfg) -> QuantSettings | None:
    """The config's quantization section as QuantSettings, or None for a 16/32-bit base."""
    q = cfg.quantization
    return QuantSettings(q.quant_type, q.double_quant, q.compute_dtype) if q.load_in_4bit else None


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_compute_dtype(name: str) -> torch.dtype:
    """auto: bf16 where the device runs it natively (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX); fp16 on GPUs
    without bf16 such as the V100; fp32 on other CPUs (they would emulate bf16, slower than fp32)."""
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def _atomic_build(target: Path, build) -> Path:
    """Build into a temporary sibling and rename, under a file lock: Ray actors may race to build it."""
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def build_preset_tokenizer():
    """A small byte-level BPE trained offline on the packaged fixture, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for line in (FIXTURES / "tiny_qa.jsonl").read_text().splitlines():
        record = json.loads(line)
        texts += [record["prompt"], record["completion"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE, model_max_length=512,
    )


def build_preset(name: str) -> Path:
    """Build (once) and cache a random-weight preset; the fixed seed makes every machine build the same base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(folder: Path) -> None:
        tokenizer = build_preset_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **PRESETS[name],
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _atomic_build(cache_dir("presets") / f"{name}-v{_PRESET_VERSION}", build)


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a plain HF folder keyed by the file's hash.

    transformers refuses `save_pretrained` on a GGUF-loaded model and a later 4-bit load trips over the
    GGUF `quantization_config`, so the weights go into a fresh model built from the config, minus that key.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def build(folder: Path) -> None:
        kwargs = dict(gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(folder)
        AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs).save_pretrained(folder)

    return _atomic_build(cache_dir("models") / f"gguf-{sha256_file(gguf_path)[:16]}", build)


def resolve_base(source: str) -> Path:
    """Any model source -> an absolute local folder that `from_pretrained` loads."""
    if hub.is_hub_id(source):  # hf:ORG/NAME@REVISION, from the Hub cache only
        return hub.resolve_hub_model(source)
    if source in PRESETS:
        return build_preset(source)
    if source in registry.REGISTERED_MODELS:
        return convert_gguf(registry.fetch(source))
    path = Path(source).expanduser().resolve()
    if path.suffix == ".gguf" or path.is_file():
        check_local_source(path)  # a file that is not GGUF is named, not handed to the GGUF reader
        return convert_gguf(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model folder has no config.json: {path}")
    check_local_source(path)  # config.json readable
    return path


def load_tokenizer(base: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dequantize_once(model, compute_dtype: str = "auto"):
    """A k-bit model's frozen weights dequantized once to the compute dtype: the exact NF4 values, served
    by plain matmuls instead of dequantizing on every forward. Only for evaluation (16-bit weight memory)."""
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return model
    return model.dequantize(dtype=resolve_compute_dtype(compute_dtype))


def load_base_model(
    base: Path, quant: QuantSettings | None = None, dtype: torch.dtype | None = None,
    trust_remote_code: bool = False, device: torch.device | None = None,
):
    """Load a resolved base folder; with `quant`, every linear layer of the blocks becomes an NF4 `Linear4bit`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or default_device()
    kwargs: dict = dict(trust_remote_code=trust_remote_code, device_map={"": device})
    if quant is not None:
        compute = resolve_compute_dtype(quant.compute_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=["lm_head"],
        )
        kwargs["dtype"] = dtype or compute
    else:
        kwargs["dtype"] = dtype or torch.float32
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)
