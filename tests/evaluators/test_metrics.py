"""evaluate / generate_exact_match on the tiny trained adapter: the numbers must be the ones they claim."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from evaluators.metrics import evaluate, generate_answers, generate_exact_match, normalize_answer
from evaluators.session import EvalSession
from trainers.batching import IGNORE_INDEX, collate
from trainers.methods.qdylora import set_active_rank


@pytest.fixture(scope="module")
def model(tiny_run):
    session = EvalSession(tiny_run.cfg)
    session.attach_adapter_dir(tiny_run.adapter_dir)
    set_active_rank(session.model, 3)  # an inner rank: truncation and alpha/3 scaling both in play
    return session.model


def test_loss_matches_the_models_own_loss(model, tiny_run):
    # Examples of one length form a batch with no padding, where HF's mean over label tokens is our definition.
    length, _ = Counter(len(ex["input_ids"]) for ex in tiny_run.examples).most_common(1)[0]
    same = [ex for ex in tiny_run.examples if len(ex["input_ids"]) == length]
    assert len(same) >= 2, "need a real batch"
    batch = collate(same, tiny_run.tokenizer.pad_token_id)
    assert bool(batch["attention_mask"].all())
    with torch.no_grad():
        device = next(model.parameters()).device
        hf_loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    ours = evaluate(model, same, tiny_run.tokenizer, batch_size=len(same))
    assert ours["eval_loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert ours["eval_perplexity"] == pytest.approx(math.exp(ours["eval_loss"]), rel=1e-9)
    assert ours["eval_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert ours["eval_examples"] == len(same)


def test_loss_is_token_weighted_over_the_whole_set(model, tiny_run):
    # Completions differ in length, so a mean of per-batch means would move with the batch size.
    assert len({sum(l != IGNORE_INDEX for l in ex["labels"]) for ex in tiny_run.examples}) > 1
    one = evaluate(model, tiny_run.examples, tiny_run.tokenizer, batch_size=1)
    many = evaluate(model, tiny_run.examples, tiny_run.tokenizer, batch_size=7)  # ragged last batch, right padding
    assert many["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    assert many["eval_tokens"] == one["eval_tokens"]
    assert many["eval_exact_match"] == one["eval_exact_match"]


def test_evaluate_restores_training_mode(model, tiny_run):
    model.train()
    evaluate(model, tiny_run.examples[:4], tiny_run.tokenizer, batch_size=4)
    assert model.training
    model.eval()


def _own_argmax_examples(model, examples, pad_id):
    """Copies of `examples` whose completion labels are what the model itself predicts at each position."""
    rebuilt = []
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex["input_ids"]], device=next(model.parameters()).device)).logits[0]
            predicted = [IGNORE_INDEX] + logits[:-1].argmax(-1).tolist()  # label t is predicted at t-1
            labels = [p if l != IGNORE_INDEX else IGNORE_INDEX for p, l in zip(predicted, ex["labels"])]
            rebuilt.append({"input_ids": ex["input_ids"], "labels": labels})
    return rebuilt


def test_teacher_forced_exact_match_counts_whole_completions(model, tiny_run):
    tok = tiny_run.tokenizer
    own = _own_argmax_examples(model, tiny_run.examples, tok.pad_token_id)
    assert evaluate(model, own, tok, batch_size=8)["eval_exact_match"] == 1.0
    # One wrong token anywhere in a completion makes that example a miss; spoil every other example.
    spoiled = []
    for i, ex in enumerate(own):
        labels = list(ex["labels"])
        if i % 2 == 0:
            last = max(j for j, l in enumerate(labels) if l != IGNORE_INDEX)
            labels[last] = (labels[last] + 1) % len(tok)
        spoiled.append({"input_ids": ex["input_ids"], "labels": labels})
    assert evaluate(model, spoiled, tok, batch_size=8)["eval_exact_match"] == pytest.approx(0.5)
    real = evaluate(model, tiny_run.examples, tok, batch_size=8)["eval_exact_match"]
    assert 0.0 <= real <= 1.0


def test_evaluate_rejects_empty_input(model, tiny_run):
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, [], tiny_run.tokenizer, batch_size=4)
    masked = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3}]
    with pytest.raises(ValueError, match="no completion tokens"):
        evaluate(model, masked, tiny_run.tokenizer, batch_size=4)


def test_batched_generation_matches_one_at_a_time(model, tiny_run):
    # Left padding done right leaves greedy output unchanged. The 20-step adapter answers EOS, or 'WhWh...'
    # for every prompt, which would prove nothing; the random base (adapter off) says a different thing
    # to each prompt, and min_new_tokens stops it from ending at once.
    records, tok, force = tiny_run.records[:12], tiny_run.tokenizer, dict(max_new_tokens=5, min_new_tokens=5)
    with model.disable_adapter():
        alone = generate_answers(model, records, tok, batch_size=1, **force)
        assert len(set(alone)) > 3
        assert generate_answers(model, records, tok, batch_size=5, **force) == alone
        # References equal to the model's own answers (up to normalisation) score 1.0; spoil a third: 2/3.
        own = [{**r, "completion": f"  {a} ."} for r, a in zip(records, alone)]
        assert generate_exact_match(model, own, tok, batch_size=5, **force) == {"gen_exact_match": 1.0}
        spoiled = [{**r, "completion": r["completion"] + "x"} if i % 3 == 0 else r for i, r in enumerate(own)]
        assert generate_exact_match(model, spoiled, tok, batch_size=5, **force)["gen_exact_match"] == pytest.approx(2 / 3)
    real = generate_exact_match(model, records, tok, max_new_tokens=5, batch_size=5)["gen_exact_match"]
    assert 0.0 <= real <= 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("enots", "enots"),
        ("  Enots. ", "enots"),
        ("Hello,   World!", "hello world"),
        ("a\tb\nc", "a b c"),
        ("17", "17"),
        ("'quoted'", "quoted"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected
