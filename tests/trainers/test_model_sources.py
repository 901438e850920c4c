"""Model sources: a local Hugging Face folder and a GGUF file, both resolved to a plain folder, no download.

The GGUF file is written here from the tiny-llama preset with the `gguf` package, the way llama.cpp's
`convert_hf_to_gguf.py` writes a Llama (including its q/k permutation), so converting it back must give
the preset's exact logits and tokenization.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.models import QuantSettings, load_base_model, load_tokenizer, resolve_base

CPU = torch.device("cpu")
# Llama module path (after `model.layers.N.`) -> GGUF leaf name, as in gguf-py's tensor map.
GGUF_LEAVES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` for q/k rows (HF's rotate-half layout -> interleaved rope pairs).

    transformers' GGUF loader undoes it (`LlamaTensorProcessor._reverse_permute_weights`).
    """
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_llama_gguf(preset: Path, out: Path) -> Path:
    """The preset as an F32 GGUF file: llama metadata, a byte-level ("gpt2") tokenizer, GGUF tensor names."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((preset / "config.json").read_text())
    tok = json.loads((preset / "tokenizer.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name("tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])

    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {added["id"] for added in tok["added_tokens"] if added["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_pad_token_id(cfg["pad_token_id"])
    writer.add_chat_template((preset / "chat_template.jinja").read_text())

    for name, tensor in load_file(preset / "model.safetensors").items():
        array = tensor.float().numpy()
        if name in GGUF_TOP:
            gguf_name = GGUF_TOP[name]
        else:
            _, _, layer, rest = name.split(".", 3)  # model.layers.N.<module>.weight
            module = rest.removesuffix(".weight")
            gguf_name = f"blk.{layer}.{GGUF_LEAVES[module]}.weight"
            if module == "self_attn.q_proj":
                array = llama_cpp_permute(array, heads, heads)
            elif module == "self_attn.k_proj":
                array = llama_cpp_permute(array, heads, kv_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def preset() -> Path:
    return resolve_base("tiny-llama")


@pytest.fixture(scope="module")
def converted(preset, tmp_path_factory):
    """(gguf file, converted folder, the DYRANK_HOME it was converted under).

    The GGUF bytes are deterministic, so in the shared test cache a previous run's folder would be found
    and nothing converted; a home of its own makes every run convert.
    """
    gguf_file = write_llama_gguf(preset, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")
    home = tmp_path_factory.mktemp("dyrank-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYRANK_HOME", str(home))
        folder = resolve_base(str(gguf_file))
    return gguf_file, folder, home


# ---- local Hugging Face folder ------------------------------------------------------------------------


def test_local_folder_resolves_to_itself(preset, monkeypatch):
    assert resolve_base(str(preset)) == preset
    monkeypatch.chdir(preset.parent)  # a relative path comes back absolute
    resolved = resolve_base(preset.name)
    assert resolved.is_absolute() and resolved == preset


def test_folder_without_config_raises_naming_it(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty.resolve()))):
        resolve_base(str(empty))
    with pytest.raises(FileNotFoundError, match=re.escape(str((tmp_path / "missing").resolve()))):
        resolve_base(str(tmp_path / "missing"))


# ---- GGUF file ----------------------------------------------------------------------------------------


def test_gguf_converts_to_a_plain_folder_with_the_same_logits(preset, converted):
    _, folder, home = converted
    assert folder.parent == home / "models" and folder.name.startswith("gguf-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False

    ours, theirs = load_base_model(folder, None, device=CPU), load_base_model(preset, None, device=CPU)
    assert not hasattr(ours.config, "quantization_config")
    ids = torch.randint(0, theirs.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Without the q/k permutation on write these differ by ~1e-2 on this model; with it they are exact.
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=0)


def test_gguf_conversion_is_cached(converted, monkeypatch):
    import transformers

    gguf_file, folder, home = converted
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setenv("DYRANK_HOME", str(home))

    def no_reload(*args, **kwargs):
        raise AssertionError("a cached GGUF conversion must not load the file again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_reload)
    assert resolve_base(str(gguf_file)) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_gguf_tokenizer_matches_the_preset(preset, converted):
    ours, theirs = load_tokenizer(converted[1]), load_tokenizer(preset)
    vocab_size = json.loads((preset / "config.json").read_text())["vocab_size"]
    # Same tokens at the same ids. transformers builds a GGUF "gpt2" tokenizer as a GPT2Tokenizer, which
    # appends its default "<|endoftext|>" (here id 384, one past the model's embeddings) when the
    # vocabulary lacks it; that is the only extra token allowed.
    assert ours.convert_ids_to_tokens(list(range(vocab_size))) == theirs.convert_ids_to_tokens(list(range(vocab_size)))
    assert set(ours.get_vocab()) - set(theirs.get_vocab()) <= {"<|endoftext|>"}
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (theirs.bos_token, theirs.eos_token, theirs.pad_token)

    for text in ["Hello world, what is 2+2?", "  leading spaces\nand a newline", "<|user|>hi there<|eos|><|assistant|>ok"]:
        assert ours(text).input_ids == theirs(text).input_ids, text
    messages = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An orange."}]
    assert ours.apply_chat_template(messages, tokenize=False) == theirs.apply_chat_template(messages, tokenize=False)
    ids = theirs("<|user|>hi<|eos|><|assistant|>ok<|pad|>").input_ids
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True) == "hiok"


def test_gguf_base_loads_in_4bit(converted):
    """The pitfall convert_gguf avoids: a leftover GGUF quantization_config breaks the NF4 load."""
    from bitsandbytes.nn import Linear4bit

    model = load_base_model(converted[1], QuantSettings())
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 40, 41, 42]], device=model.device)).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()
