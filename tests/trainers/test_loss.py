"""The chunked causal-LM loss (trainers/loss.py) gives the model's own loss and gradients, builds logits a chunk at
a time (recomputed one chunk at a time in backward), and is what training.loss_chunk_tokens switches on."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_job
from trainers.adapters import attach_lora
from trainers.batching import IGNORE_INDEX
from trainers.config_base import ConfigError
from trainers.finetune import FinetuneRecipe
from trainers.loss import causal_lm_loss
from trainers.models import QuantSettings, build_preset, load_base_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = attach_lora(load_base_model(build_preset("tiny-llama"), QuantSettings()), rank=8, alpha=16, dropout=0.0,
                    target_modules="all-linear", dynamic=True, gradient_checkpointing=True).train()
    with torch.no_grad():  # a trained-looking adapter: B starts at zero, which would leave it out of the gradients
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return m


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows: a prompt without loss, then a completion; the second row right-padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, vocab, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :9] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    labels[1, 18:], mask[1, 18:] = IGNORE_INDEX, 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("chunk", [0, 1, 7, 10_000])
def test_equals_the_models_own_loss_and_gradients(model, chunk):
    batch = _batch(model.config.vocab_size)
    own, own_grads = _loss_and_grads(model, lambda: model(**batch).loss)
    mine, my_grads = _loss_and_grads(model, lambda: causal_lm_loss(model, batch, chunk))
    torch.testing.assert_close(mine, own, rtol=1e-5, atol=1e-5)
    for a, b in zip(my_grads, own_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_logits_exist_one_chunk_at_a_time_and_are_recomputed_in_backward(model):
    batch = _batch(model.config.vocab_size)
    scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # 15 + 8 = 23 tokens
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        causal_lm_loss(model, batch, chunk_tokens=5).backward()
    finally:
        hook.remove()
    chunks = -(-scored // 5)
    assert max(rows) <= 5 and sum(rows) == 2 * scored  # every scored token once forward, once recomputed
    assert len(rows) == 2 * chunks


def test_a_batch_without_labelled_tokens_gives_zero(model):
    batch = _batch(model.config.vocab_size)
    batch["labels"][:] = IGNORE_INDEX
    loss = causal_lm_loss(model, batch, 4)
    assert loss.item() == 0.0 and loss.requires_grad


def test_training_with_chunked_loss_follows_the_same_losses(tmp_path, monkeypatch):
    import trainers.loss

    calls = []
    monkeypatch.setattr(trainers.loss, "causal_lm_loss", lambda *a: calls.append(a[2]) or causal_lm_loss(*a))

    def losses(chunk: int) -> list[float]:
        recipe = FinetuneRecipe(tiny_job("training.max_steps=3", f"training.loss_chunk_tokens={chunk}"),
                                tmp_path / str(chunk), progress=False)
        recipe.setup()
        recipe.model.train()
        return [recipe.train_step(step)["train_loss"] for step in range(3)]

    own = losses(0)
    assert calls == [0, 0, 0]  # every step's loss is ours (scored positions only), in one chunk
    assert losses(16) == pytest.approx(own, rel=1e-4)
    assert calls == [0, 0, 0, 16, 16, 16]  # then in chunks of 16


def test_config_refuses_chunked_loss_where_the_method_adds_to_its_own_loss():
    with pytest.raises((ConfigError, ValueError), match="loss_chunk_tokens"):
        tiny_job("adapter.method=adalora", "quantization.load_in_4bit=false", "adapter.rank=4",
                 "training.max_steps=20", "training.loss_chunk_tokens=64")
    with pytest.raises((ConfigError, ValueError), match="loss_chunk_tokens"):
        tiny_job("training.loss_chunk_tokens=-1")
