"""Data sets by Hub name: `data.dataset: hf:ORG/NAME[@REVISION]`, read from huggingface_hub's cache only.

A script-free Hub data set (parquet / json / csv files, split by file name as the Hub lays them out) is
resolved with `snapshot_download(repo_type="dataset", local_files_only=True)` and read by `datasets` from
that folder, so nothing is downloaded at run time; fetch it once with `hf download ORG/NAME --repo-type
dataset`. `data.splits` maps our train / validation / test to the data set's split names (default: the
same names, where it has them); a held-out split it lacks is cut from train by record hash, as for files.
"""

from __future__ import annotations

from pathlib import Path

from trainers.datasets.files import datasets_cache, table_records
from trainers.hub import hub_cache_dir, parse_hub_id

OUR_SPLITS = ("train", "validation", "test")


def resolve_hub_dataset(source: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub = parse_hub_id(source)
    try:
        return Path(snapshot_download(hub.repo_id, repo_type="dataset", revision=hub.revision,
                                      cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise FileNotFoundError(
            f"data set {source} is not in {hub_cache_dir() or 'the Hugging Face cache'} and dyrank never downloads "
            f"at run time; fetch it once with `hf download {hub.repo_id} --repo-type dataset"
            + (f" --revision {hub.revision}" if hub.revision else "") + "`"
        ) from None


def read_hub_splits(data) -> dict[str, list[dict]]:
    """{our split: records} for the splits the data set provides (train always), mapped and checked."""
    from datasets import load_dataset

    source = data.dataset
    folder = resolve_hub_dataset(source)
    try:
        tables = load_dataset(str(folder), cache_dir=datasets_cache())
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(f"data set {source}: not readable by `datasets` ({first})") from None
    wanted = dict(data.splits) or {name: name for name in OUR_SPLITS if name in tables}
    unknown = {ours: theirs for ours, theirs in wanted.items() if theirs not in tables}
    if unknown:
        ours, theirs = next(iter(unknown.items()))
        raise ValueError(f"data.splits.{ours}: {source} has no split {theirs!r}; it has {', '.join(tables)}")
    if "train" not in wanted:
        raise ValueError(f"data.splits: {source} has no split named train ({', '.join(tables)}); map one with "
                         "data.splits.train")
    return {ours: table_records(tables[theirs], f"{source}[{theirs}]", data.columns) for ours, theirs in wanted.items()}
