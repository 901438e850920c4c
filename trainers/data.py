"""Instruction data: JSONL records -> token ids with the loss on completion tokens only.

A record is {"prompt", "completion"} or {"messages": [...]} (the last message is the assistant's
completion). Prompts go through the tokenizer's chat template where it has one. Splits are
deterministic (a hash of each record), and so is the batch order, so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.datasets import BUILT_DATASETS, split_files

IGNORE_INDEX = -100  # transformers' loss skips these labels
BUILTIN_DATASETS = {"tiny-qa": Path(__file__).parent / "fixtures" / "tiny_qa.jsonl"}


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not (("prompt" in record and "completion" in record) or "messages" in record):
            raise ValueError(f"{path}:{number}: a record needs prompt and completion, or messages")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def split_fingerprint(records: list[dict]) -> dict:
    """Size and content hash of one split, so a tracked run says exactly what it saw."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True).encode() + b"\n")
    return {"records": len(records), "sha256": digest.hexdigest()}


def record_hash(record: dict) -> int:
    return int(hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12], 16)


def split_by_hash(records: list[dict], fractions: dict[str, float]) -> dict[str, list[dict]]:
    """Deterministic split: each record's hash picks a bucket in [0, 1); the first `fractions[name]` of
    that interval goes to `name`, in order, and the rest to "train". Same records, same split, anywhere."""
    splits: dict[str, list[dict]] = {"train": [], **{name: [] for name in fractions}}
    for record in records:
        bucket, edge = (record_hash(record) % 10_000) / 10_000, 0.0
        for name, fraction in fractions.items():
            edge += fraction
            if bucket < edge:
                splits[name].append(record)
                break
        else:
            splits["train"].append(record)
    return splits


def load_splits(data) -> dict[str, list[dict]]:
    """`data` is the config's data section; returns train / validation / test records. A built data set
    (`dyrank data build`) brings its own splits; otherwise held-out splits without a file of their own
    are cut from the training file by record hash."""
    if data.dataset in BUILT_DATASETS:
        return {name: read_jsonl(path) for name, path in split_files(data.dataset).items()}
    records = read_jsonl(BUILTIN_DATASETS[data.dataset] if data.dataset else data.train_file)
    cut = {}
    if not data.validation_file:
        cut["validation"] = data.validation_fraction
    if not data.test_file:
        cut["test"] = data.test_fraction
    splits = split_by_hash(records, cut)
    if data.validation_file:
        splits["validation"] = read_jsonl(data.validation_file)
    if data.test_file:
        splits["test"] = read_jsonl(data.test_file)
    return splits


def prompt_and_completion(record: dict, tokenizer) -> tuple[str, str]:
    messages = record.get("messages") or [{"role": "user", "content": record["prompt"]},
                                          {"role": "assistant", "content": record["completion"]}]
    *context, answer = messages
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    else:
        prompt = "\n".join(m["content"] for m in context) + "\n"
    return prompt, answer["content"]


def encode(record: dict, tokenizer, max_seq_len: int) -> dict[str, list[int]]:
    """Token ids of prompt + completion + eos; labels mask the prompt so only the completion is learned."""
    prompt, completion = prompt_and_completion(record, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
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
