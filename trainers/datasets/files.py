"""Records from tables the `datasets` library reads: local .json / .csv / .parquet files and hf: data sets.

Columns are mapped to record keys (`data.columns`, e.g. {prompt: question, completion: answer}); every row
is then checked by `records.check_record`, so a bad row is one line naming the file (or data set and
split) and the row, as a bad JSONL line is. The `datasets` cache goes under dyrank's cache, not the user's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from trainers.datasets.records import check_record
from trainers.paths import cache_dir

TABLE_FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}  # .jsonl stays splits.read_jsonl


def is_table_file(path) -> bool:
    return Path(path).suffix.lower() in TABLE_FORMATS


def datasets_cache() -> str:
    return str(cache_dir("hf-datasets"))


def read_table_file(path, columns: dict[str, str] | None = None) -> list[dict]:
    """The records of one .json / .csv / .parquet file, columns mapped and every row checked."""
    from datasets import load_dataset

    path = Path(path)
    kind = TABLE_FORMATS[path.suffix.lower()]
    try:
        table = load_dataset(kind, data_files=str(path), split="train", cache_dir=datasets_cache(),
                             **(_csv_as_text(path) if kind == "csv" else {}))
    except Exception as exc:  # the reader's own error, on one line, naming the file
        raise ValueError(f"{path}: not a readable {path.suffix[1:]} file ({_first_line(exc)})") from None
    return table_records(table, str(path), columns)


def _csv_as_text(path: Path) -> dict:
    """Every CSV column read as text: an answer "42" stays the string "42" (pandas would make it an int)."""
    import csv

    from datasets import Features, Value

    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return {"features": Features({name: Value("string") for name in header})}


def table_records(rows: Iterable[dict], where: str, columns: dict[str, str] | None = None) -> list[dict]:
    """Rows -> checked records. `columns` maps a record key to the row's column; a mapped column the rows
    lack is an error naming it, and so is a table with no rows."""
    columns = dict(columns or {})
    names = list(getattr(rows, "column_names", []) or [])
    missing = [f"{key}: {col!r}" for key, col in columns.items() if names and col not in names]
    if missing:
        raise ValueError(f"{where}: data.columns names columns it lacks ({', '.join(missing)}); it has {', '.join(names)}")
    mapped = set(columns.values())
    records = []
    for number, row in enumerate(rows, start=1):
        record = {key: row[col] for key, col in columns.items()}
        for col, value in row.items():  # other columns ride along, as in JSONL, when they are plain JSON
            if col not in mapped and col not in record and _json_safe(value):
                record[col] = value
        records.append(check_record(record, f"{where}:row {number}"))
    if not records:
        raise ValueError(f"{where}: no records")
    return records


def _json_safe(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
