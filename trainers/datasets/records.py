"""What one instruction record must hold, checked in one place for every source (JSONL, json/csv/parquet
files, hf: data sets): {"prompt", "completion"} (strings) or {"messages": [...]}. Errors are one line that
starts with where the record came from (`file:line`, `file:row N`, `hf:ORG/NAME[split]:row N`)."""

from __future__ import annotations


def check_record(record, where: str) -> dict:
    """`record` if it is a usable record, else a ValueError naming `where`."""
    if not isinstance(record, dict) or not (("prompt" in record and "completion" in record) or "messages" in record):
        raise ValueError(f"{where}: a record needs prompt and completion, or messages")
    if "messages" in record:
        if not isinstance(record["messages"], list) or not record["messages"]:
            raise ValueError(f"{where}: messages must be a non-empty list")
    else:
        for key in ("prompt", "completion"):
            if not isinstance(record[key], str):
                raise ValueError(f"{where}: {key} must be a string, got {type(record[key]).__name__}")
    return record
