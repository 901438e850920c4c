"""Helpers shared by the data set builders: keyed hash splits, JSONL writing, content hashes.

A builder splits by a *group key* (a country's ISO alpha-3 code, a WordNet synset id), never by record,
so every record of one group lands in the same split and the held-out splits ask about groups that
training never saw. The bucket is a pure function of (salt, key): same key, same split, on any machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_SALT = "split"  # change only with a builder version bump: it reshuffles every split


def unit_hash(key: str, salt: str = SPLIT_SALT) -> float:
    """A deterministic number in [0, 1) for `key`; different salts give independent orders."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def split_by_key(records: Iterable[dict], key: Callable[[dict], str],
                 fractions: dict[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[dict]]:
    """Records -> {split: records}, each group (`key(record)`) wholly in one split; order kept within a split.

    `fractions` are taken in order as consecutive slices of [0, 1) (train [0, .8), validation [.8, .9),
    test [.9, 1) by default) and must add up to 1.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must add up to 1, got {fractions}")
    splits: dict[str, list[dict]] = {name: [] for name in fractions}
    names = list(fractions)
    for record in records:
        point, edge = unit_hash(key(record)), 0.0
        for name in names:
            edge += fractions[name]
            if point < edge:
                break
        splits[name].append(record)  # float rounding past the last edge falls into the last split
    return splits


def to_jsonl(records: Iterable[dict]) -> bytes:
    """One JSON object a line, keys in the builder's order, UTF-8 kept as is; byte-stable for hashing."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
