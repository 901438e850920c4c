"""Encoding a record: a record far longer than max_seq_len is cut before it is tokenized, with the same tokens."""

from __future__ import annotations

import time

from trainers.batching import CHARS_PER_TOKEN_BOUND, encode
from trainers.models import build_preset_tokenizer


class CountingTokenizer:
    """The preset tokenizer, recording the length of every text it is given."""

    def __init__(self, tokenizer):
        self.inner, self.lengths = tokenizer, []
        self.chat_template, self.eos_token_id = tokenizer.chat_template, tokenizer.eos_token_id

    def apply_chat_template(self, *args, **kwargs):
        return self.inner.apply_chat_template(*args, **kwargs)

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner(text, **kwargs)


def test_a_2mb_record_is_cut_before_tokenizing_and_keeps_its_first_tokens():
    tokenizer = CountingTokenizer(build_preset_tokenizer())
    words = " ".join(f"word{i % 97}" for i in range(300_000))  # about 2 MB
    assert len(words) > 2_000_000
    started = time.perf_counter()
    long_prompt = encode({"prompt": words, "completion": "4"}, tokenizer, max_seq_len=64)
    long_answer = encode({"prompt": "2+2=", "completion": words}, tokenizer, max_seq_len=64)
    assert time.perf_counter() - started < 2.0
    assert max(tokenizer.lengths) <= 64 * CHARS_PER_TOKEN_BOUND
    short = lambda record: encode(record, tokenizer, max_seq_len=64)  # noqa: E731
    assert long_prompt == short({"prompt": words[:5000], "completion": "4"})
    assert long_answer == short({"prompt": "2+2=", "completion": words[:5000]})
    assert len(long_prompt["input_ids"]) == len(long_answer["input_ids"]) == 64
