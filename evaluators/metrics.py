"""Metrics for one model on one evaluation set: completion-token loss, perplexity, exact match.

`evaluate` is one teacher-forced pass per batch (cheap enough to run at every rank); `generate_exact_match`
decodes greedily and compares text, which is what a user of the adapter actually sees.
"""

from __future__ import annotations

import re
import string

import torch

from evaluators.completion_loss import completion_metrics, completion_scores
from trainers.batching import prompt_and_completion


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def evaluate(model, examples: list[dict], tokenizer, batch_size: int, per_example: dict | None = None) -> dict:
    """Loss, perplexity and teacher-forced exact match over the completion tokens of `examples`.

    `examples` are encoded records (trainers.batching.encode: input_ids, labels with the prompt masked).
    The loss is token-weighted over the whole set (sum of token losses / number of completion tokens),
    so it does not depend on batch_size or on how the examples happen to be grouped.
    With `per_example` (a dict), each example's loss sum, token count and exact match are appended to its
    "loss_sum", "tokens" and "exact" lists: what bootstrap intervals resample.
    """
    [scores] = completion_scores(model, examples, tokenizer.pad_token_id, batch_size)
    if per_example is not None:
        for key, values in scores.items():
            per_example.setdefault(key, []).extend(values)
    return completion_metrics(scores)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: '  Enots. ' and 'enots' compare equal."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


@torch.inference_mode()
def generate_answers(model, records: list[dict], tokenizer, max_new_tokens: int = 32, batch_size: int = 8,
                     **generate_kwargs) -> list[str]:
    """Greedy completions for the records' chat-template prompts, decoded without special tokens.

    `generate_kwargs` go to `model.generate` (e.g. min_new_tokens)."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in range(0, len(records), batch_size):
            prompts = [prompt_and_completion(r, tokenizer)[0] for r in records[start:start + batch_size]]
            # Same tokenization as training (no extra BOS), and left padding so every prompt ends at the
            # last column: a decoder-only model continues from there.
            ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=device)
            attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **generate_kwargs,
            )
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def generate_exact_match(model, records: list[dict], tokenizer, max_new_tokens: int = 32, batch_size: int = 8,
                         per_example: dict | None = None, **generate_kwargs) -> dict:
    """Fraction of records whose greedy completion equals the reference after `normalize_answer`;
    with `per_example`, each record's 1.0/0.0 is appended to its "gen_exact" list."""
    if not records:
        raise ValueError("no records to generate for")
    answers = generate_answers(model, records, tokenizer, max_new_tokens, batch_size, **generate_kwargs)
    references = [prompt_and_completion(r, tokenizer)[1] for r in records]
    matches = [float(normalize_answer(a) == normalize_answer(ref)) for a, ref in zip(answers, references)]
    if per_example is not None:
        per_example.setdefault("gen_exact", []).extend(matches)
    return {"gen_exact_match": sum(matches) / len(records)}
