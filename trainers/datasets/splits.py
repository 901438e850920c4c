"""Instruction records from JSONL files, and the train / validation / test splits a job config names.

A record is {"prompt", "completion"} or {"messages": [...]}. Splits are deterministic (a hash of each
record), so the same records split the same way anywhere. Standard library only: the config schema and the
driver read data without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trainers.datasets import BUILDABLE_DATASETS, built_split_files, split_files

# Packaged with dyrank (a small fixture file); `dyrank data build` makes the BUILDABLE_DATASETS.
PACKAGED_DATASETS = {"tiny-qa": Path(__file__).resolve().parent.parent / "fixtures" / "tiny_qa.jsonl"}


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; a ValueError names the file and line of the first bad one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    records = []
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply") from None
        problem = record_problem(record)
        if problem:
            raise ValueError(f"{where}: {problem}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def record_problem(record) -> str | None:
    """What is wrong with one record, or None: {"prompt": str, "completion": str}, or {"messages": [...]} with
    at least one message, each {"role": str, "content": str} (the last one is the completion)."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {type(record).__name__}"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                return f"messages[{index}] must be an object with role and content"
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    return f"messages[{index}].{key} must be a string, got {message.get(key)!r}"[:200]
        return None
    if "prompt" not in record or "completion" not in record:
        return "a record needs prompt and completion, or messages"
    for key in ("prompt", "completion"):
        if not isinstance(record[key], str):
            return f"{key} must be a string, got {type(record[key]).__name__}"
    return None


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


def load_splits(data, build: bool = True) -> dict[str, list[dict]]:
    """`data` is the config's data section; returns train / validation / test records, each split non-empty.
    A built data set (`dyrank data build`) brings its own splits (with `build` false, one not built yet is an
    error saying how to build it); otherwise held-out splits without a file of their own are cut from the
    training file by record hash."""
    if data.dataset in BUILDABLE_DATASETS:
        files = split_files(data.dataset) if build else built_split_files(data.dataset)
        return _non_empty({name: read_jsonl(path) for name, path in files.items()}, files)
    train_file = PACKAGED_DATASETS[data.dataset] if data.dataset else data.train_file
    records = read_jsonl(train_file)
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
    return _non_empty(splits, {"train": train_file, "validation": data.validation_file or train_file,
                               "test": data.test_file or train_file})


def _non_empty(splits: dict[str, list[dict]], files: dict) -> dict[str, list[dict]]:
    for name in ("train", "validation", "test"):
        if not splits.get(name):
            raise ValueError(f"{files[name]}: no records left for the {name} split; add records, or set "
                             f"data.{name}_fraction / data.{name}_file" if name != "train" else
                             f"{files[name]}: no records left for training after the held-out splits; add records "
                             "or lower data.validation_fraction / data.test_fraction")
    return splits
