"""What one instruction record must hold, checked in one place for every source (JSONL, json/csv/parquet
files, hf: data sets): {"prompt", "completion"} (strings) or {"messages": [...]} of {"role", "content"} strings.
Errors are one line that starts with where the record came from (`file:line`, `file:row N`,
`hf:ORG/NAME[split]:row N`)."""

from __future__ import annotations


def check_record(record, where: str) -> dict:
    """`record` if it is a usable record, else a ValueError naming `where`."""
    problem = record_problem(record)
    if problem:
        raise ValueError(f"{where}: {problem}")
    return record


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
