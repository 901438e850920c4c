"""Records -> token ids with the loss on completion tokens only, and the batches training and evaluation read.

A record is {"prompt", "completion"} or {"messages": [...]} (the last message is the assistant's
completion); trainers/datasets/splits.py reads and splits them. Prompts go through the tokenizer's chat
template where it has one. The batch order is deterministic, so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # transformers' loss skips these labels


# A token never spans more characters than this in practice (BPE merges top out far below); cutting each text to
# max_seq_len * CHARS_PER_TOKEN_BOUND characters before tokenizing keeps the first max_seq_len tokens the same while
# a 2 MB record costs what a max_seq_len one does.
CHARS_PER_TOKEN_BOUND = 32


def prompt_and_completion(record: dict, tokenizer, max_chars: int | None = None) -> tuple[str, str]:
    """The prompt (through the chat template where there is one) and the completion; with `max_chars`, every
    message is cut to that many characters first (only the first max_seq_len tokens are ever kept)."""
    cut = (lambda text: text[:max_chars]) if max_chars else (lambda text: text)
    messages = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                          {"role": "assistant", "content": record["completion"]}]
    messages = [{**m, "content": cut(m["content"])} for m in messages]
    *context, answer = messages
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    else:
        prompt = "\n".join(m["content"] for m in context) + "\n"
    return cut(prompt), answer["content"]


def encode(record: dict, tokenizer, max_seq_len: int) -> dict[str, list[int]]:
    """Token ids of prompt + completion + eos; labels mask the prompt so only the completion is learned."""
    prompt, completion = prompt_and_completion(record, tokenizer, max_seq_len * CHARS_PER_TOKEN_BOUND)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_seq_len]
    answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_seq_len]
    return {"input_ids": input_ids, "labels": labels}


def pack(examples: list[dict], max_seq_len: int) -> list[dict]:
    """Concatenate examples into blocks of at most max_seq_len tokens (attention crosses example borders)."""
    blocks, ids, labels = [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex["input_ids"]) > max_seq_len:
            blocks.append({"input_ids": ids, "labels": labels})
            ids, labels = [], []
        ids, labels = ids + ex["input_ids"], labels + ex["labels"]
    if ids:
        blocks.append({"input_ids": ids, "labels": labels})
    return blocks


def encode_all(records: list[dict], tokenizer, max_seq_len: int, packing: bool = False) -> list[dict]:
    examples = [encode(r, tokenizer, max_seq_len) for r in records]
    return pack(examples, max_seq_len) if packing else examples


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions get no attention and no loss."""
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for ex in examples:
        pad = width - len(ex["input_ids"])
        batch["input_ids"].append(ex["input_ids"] + [pad_id] * pad)
        batch["labels"].append(ex["labels"] + [IGNORE_INDEX] * pad)
        batch["attention_mask"].append([1] * len(ex["input_ids"]) + [0] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


@dataclass
class BatchSchedule:
    """Which examples make up micro-batch k: a fresh seeded permutation per epoch, so position k is a pure
    function of (seed, k) and a resumed run picks up exactly where the interrupted one stopped."""

    num_examples: int
    batch_size: int
    seed: int

    def indices(self, k: int) -> list[int]:
        per_epoch = max(1, self.num_examples // self.batch_size)  # drop the ragged tail
        epoch, slot = divmod(k, per_epoch)
        order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        chunk = order[slot * self.batch_size:(slot + 1) * self.batch_size]
        return chunk.tolist()


def eval_batches(examples: list[dict], batch_size: int, pad_id: int):
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)
