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
from trainers.datasets.files import is_table_file, read_table_file
from trainers.datasets.hub import read_hub_splits
from trainers.datasets.records import check_record
from trainers.hub import is_hub_id

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
        records.append(check_record(record, where))
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


def load_splits(data, build: bool = True) -> dict[str, list[dict]]:
    """`data` is the config's data section; returns train / validation / test records, each split non-empty.
    A built data set (`dyrank data build`) brings its own splits (with `build` false, one not built yet is an
    error saying how to build it); otherwise held-out splits without a file of their own are cut from the
    training file by record hash."""
    if data.dataset in BUILDABLE_DATASETS:
        files = split_files(data.dataset) if build else built_split_files(data.dataset)
        return _non_empty({name: read_jsonl(path) for name, path in files.items()}, files)
    given = read_hub_splits(data) if is_hub_id(data.dataset) else {}  # hf:ORG/NAME brings the splits it has
    train_file = PACKAGED_DATASETS[data.dataset] if data.dataset and not is_hub_id(data.dataset) else (data.train_file or data.dataset)
    records = given.pop("train", None) or read_records(train_file, data)
    cut = {}
    if not data.validation_file and "validation" not in given:
        cut["validation"] = data.validation_fraction
    if not data.test_file and "test" not in given:
        cut["test"] = data.test_fraction
    splits = split_by_hash(records, cut)
    splits.update(given)
    if data.validation_file:
        splits["validation"] = read_records(data.validation_file, data)
    if data.test_file:
        splits["test"] = read_records(data.test_file, data)
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


def read_records(path, data) -> list[dict]:
    """A data file by its suffix: .json / .csv / .parquet through `datasets` (with data.columns), else JSONL."""
    return read_table_file(path, data.columns) if is_table_file(path) else read_jsonl(path)
