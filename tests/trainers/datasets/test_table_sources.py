"""Data by its usual names: .json / .csv / .parquet files and hf: data sets, read through `datasets` with column
and split mappings, every row checked with the same one-line errors as JSONL."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from tests.conftest import tiny_job
from tests.support.hub_cache import populate_hub_cache
from trainers.config import ConfigError
from trainers.datasets.splits import load_splits

ROWS = [{"question": f"What is {i} + 1?", "answer": str(i + 1), "level": i % 3} for i in range(40)]
FILE = ("data.dataset=null", "data.columns={prompt: question, completion: answer}")


def _write(path, rows):
    table = Dataset.from_list(rows)
    {".json": table.to_json, ".csv": table.to_csv, ".parquet": table.to_parquet}[path.suffix](str(path))
    return path


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_a_table_file_loads_with_its_columns_mapped(tmp_path, suffix):
    path = _write(tmp_path / f"qa{suffix}", ROWS)
    splits = load_splits(tiny_job(*FILE, f"data.train_file={path}").data)
    records = splits["train"] + splits["validation"] + splits["test"]
    assert sorted(r["prompt"] for r in records) == sorted(r["question"] for r in ROWS)
    assert all(r["completion"] == str(int(r["prompt"].split()[2]) + 1) for r in records)
    assert all(str(r["level"]) in ("0", "1", "2") for r in records)  # other columns ride along (CSV: as text)
    assert splits["validation"] and splits["test"]  # held-out splits cut by record hash, as for JSONL


def test_a_bad_row_is_one_line_naming_file_and_row(tmp_path):
    rows = [*ROWS[:5], {"question": "Broken?", "answer": None, "level": 0}, *ROWS[5:]]
    path = _write(tmp_path / "qa.parquet", rows)
    with pytest.raises(ValueError, match=rf"^{path}:row 6: completion must be a string, got NoneType$"):
        load_splits(tiny_job(*FILE, f"data.train_file={path}").data)


def test_a_mapped_column_the_file_lacks_is_named(tmp_path):
    path = _write(tmp_path / "qa.csv", ROWS)
    with pytest.raises(ValueError, match=r"qa.csv: data.columns names columns it lacks \(completion: 'reply'\)"):
        load_splits(tiny_job("data.dataset=null", f"data.train_file={path}",
                             "data.columns={prompt: question, completion: reply}").data)


def test_unmapped_columns_fail_like_jsonl(tmp_path):
    path = _write(tmp_path / "qa.json", ROWS)
    with pytest.raises(ValueError, match=r"qa.json:row 1: a record needs prompt and completion, or messages"):
        load_splits(tiny_job("data.dataset=null", f"data.train_file={path}").data)


@pytest.fixture
def hub_data(tmp_path, monkeypatch):
    """A script-free parquet data set in the Hub cache's layout: train and dev splits by file name."""
    files = tmp_path / "repo"
    (files / "data").mkdir(parents=True)
    _write(files / "data" / "train-00000-of-00001.parquet", ROWS[:30])
    _write(files / "data" / "dev-00000-of-00001.parquet", ROWS[30:])
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "qa-org/sums", files, repo_type="datasets")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return "hf:qa-org/sums"


def test_a_hub_data_set_loads_from_the_cache_with_its_splits_mapped(hub_data):
    data = tiny_job(f"data.dataset={hub_data}", "data.splits={train: train, validation: dev}",
                    "data.columns={prompt: question, completion: answer}").data
    splits = load_splits(data)
    assert [r["prompt"] for r in splits["validation"]] == [r["question"] for r in ROWS[30:]]  # its own split, whole
    assert len(splits["train"]) + len(splits["test"]) == 30 and splits["test"]  # test cut from train
    assert json.dumps(splits["train"])  # JSON-able: split_fingerprint hashes it


def test_hub_data_errors_name_the_id_or_the_field(hub_data):
    columns = "data.columns={prompt: question, completion: answer}"
    with pytest.raises(ValueError, match=r"data.splits.validation: hf:qa-org/sums has no split 'validation'"):
        load_splits(tiny_job(f"data.dataset={hub_data}", "data.splits={train: train, validation: validation}",
                             columns).data)
    with pytest.raises(FileNotFoundError, match=r"data set hf:qa-org/absent is not in .*hub.*--repo-type dataset"):
        load_splits(tiny_job("data.dataset=hf:qa-org/absent", columns).data)


def test_mappings_that_would_be_ignored_are_config_errors():
    with pytest.raises(ConfigError, match="data.splits"):
        tiny_job("data.splits={train: dev}")  # tiny-qa is packaged JSONL: no splits to map
    with pytest.raises(ConfigError, match="data.columns"):
        tiny_job("data.columns={prompt: q}")
    with pytest.raises(ConfigError, match="data.dataset"):
        tiny_job("data.dataset=hf:nope")
