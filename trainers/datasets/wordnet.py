"""WordNet 3.0 definitions from the Princeton database files (`data.noun`, `data.verb`, `data.adj`,
`data.adv`), parsed per wndb(5); split by synset.

A data file starts with license lines that begin with two spaces; every other line is one synset:

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] [frames ...] | gloss

`w_cnt` and `lex_id` are hexadecimal, `p_cnt` decimal, each pointer is 4 fields (symbol, offset, pos,
source/target), verbs may carry frames after the pointers, and adjective words may end in a syntactic
marker such as `(a)`, `(p)` or `(ip)`. Offsets are unique within one file, so a synset's id is
"OFFSET-SS_TYPE" (as NLTK writes it, "02084071-n").

Two tasks per synset, on its first lemma (underscores -> spaces) and its gloss cut before the quoted
examples (`; "...`), see `short_gloss`: define-a-word ("Define: harbor" -> gloss) and the reverse dictionary
(gloss -> lemma). Records are {"prompt", "completion", "synset", "pos", "task"}; the split hashes the
synset id, so both records of a synset share one split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainers.datasets.common import DEFAULT_FRACTIONS, split_by_key, unit_hash

SOURCE = "wn"
VERSION = 1  # bump when parsing, tasks, sampling or the split change: the cached build is redone
DEFAULT_MAX_RECORDS = 20_000  # of 2 x 117,659 possible; None or 0 keeps every synset
DATA_FILES = {"noun": "data.noun", "verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}
SS_TYPES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
TASKS = ("define", "reverse")
SAMPLE_SALT = "sample"  # independent of the split's salt, so capping does not skew the split
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_EXAMPLES = re.compile(r';\s*"')  # wndb(5): the gloss's examples are double-quoted, after "; "


class WordNetFormatError(ValueError):
    """A data line that does not follow wndb(5); the message names the file and line."""


@dataclass(frozen=True)
class Synset:
    offset: str  # 8 decimal digits, the line's byte offset in its file
    ss_type: str  # n, v, a, s (adjective satellite) or r
    lemmas: tuple[str, ...]  # as in the file: underscores, case, adjective markers
    gloss: str  # the whole gloss, definitions and quoted examples

    @property
    def id(self) -> str:
        return f"{self.offset}-{self.ss_type}"

    @property
    def pos(self) -> str:
        return SS_TYPES[self.ss_type]


def parse_line(line: str) -> Synset:
    """One data line -> Synset; raises ValueError when a field is not where wndb(5) puts it."""
    head, bar, gloss = line.rstrip("\n").partition(" | ")
    fields = head.split()
    if len(fields) < 6 or not fields[0].isdigit() or fields[2] not in SS_TYPES:
        raise ValueError("not a synset line")
    offset, ss_type = fields[0], fields[2]
    w_cnt = int(fields[3], 16)
    words = fields[4:4 + 2 * w_cnt:2]
    p_at = 4 + 2 * w_cnt
    if w_cnt < 1 or len(fields) <= p_at or not fields[p_at].isdigit():
        raise ValueError(f"word count {fields[3]} does not match the line")
    p_cnt = int(fields[p_at])
    if len(fields) < p_at + 1 + 4 * p_cnt:
        raise ValueError(f"pointer count {p_cnt} does not match the line")
    return Synset(offset=offset, ss_type=ss_type, lemmas=tuple(words), gloss=gloss.strip() if bar else "")


def read_synsets(data_dir: Path) -> Iterator[Synset]:
    """Every synset of the four data files, in file order (noun, verb, adjective, adverb), header skipped."""
    for name in DATA_FILES.values():
        path = Path(data_dir) / name
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.startswith("  ") or not line.strip():
                    continue  # the license header: "  1 This software and database ..."
                try:
                    yield parse_line(line)
                except ValueError as exc:
                    raise WordNetFormatError(f"{path}:{number}: {exc}") from None


def short_gloss(gloss: str) -> str:
    """The definition part of a gloss: cut at the first ";" that opens the quoted examples.

    Not at the very first ";": about 16k glosses have several definition clauses, and in some the first
    is only a qualifier ("especially of muscles; drawing away from the midline of the body ..."), which
    alone would be a wrong definition and a useless reverse-dictionary clue.
    """
    match = _EXAMPLES.search(gloss)
    return (gloss[:match.start()] if match else gloss).strip().rstrip(";").rstrip()


def lemma_text(word: str) -> str:
    """A lemma as text: adjective marker dropped, underscores to spaces ("a_cappella" -> "a cappella")."""
    return _ADJ_MARKER.sub("", word).replace("_", " ").strip()


def synset_records(synset: Synset) -> list[dict]:
    """Define-a-word and reverse-dictionary records; none when the lemma or short gloss is empty."""
    lemma, gloss = lemma_text(synset.lemmas[0]), short_gloss(synset.gloss)
    if not lemma or not gloss:
        return []
    common = {"synset": synset.id, "pos": synset.pos}
    return [
        {"prompt": f"Define: {lemma}", "completion": gloss, **common, "task": "define"},
        {"prompt": f"Which word means: {gloss}?", "completion": lemma, **common, "task": "reverse"},
    ]


def build_records(data_dir: Path, max_records: int | None = DEFAULT_MAX_RECORDS) -> list[dict]:
    """Records of every usable synset, or of a deterministic sample of max_records // 2 synsets (the
    smallest salted hashes of their ids, so the sample is uniform over parts of speech), in file order."""
    per_synset = [records for records in map(synset_records, read_synsets(data_dir)) if records]
    if max_records and sum(map(len, per_synset)) > max_records:
        keep = max_records // len(TASKS)
        ranked = sorted(range(len(per_synset)), key=lambda i: unit_hash(per_synset[i][0]["synset"], SAMPLE_SALT))
        chosen = set(ranked[:keep])
        per_synset = [records for i, records in enumerate(per_synset) if i in chosen]
    return [record for records in per_synset for record in records]


def build_splits(data_dir: Path, max_records: int | None = DEFAULT_MAX_RECORDS,
                 fractions: dict[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[dict]]:
    """train / validation / test records, split on a hash of the synset id."""
    return split_by_key(build_records(data_dir, max_records), key=lambda r: r["synset"], fractions=fractions)
