"""WordNet builder on slices of the real wndb(5) files (see fixtures/README.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from trainers.datasets import wordnet
from trainers.datasets.common import SPLITS

FIXTURE = Path(__file__).parent / "fixtures" / "wordnet-3.0"
RECORD_KEYS = ["prompt", "completion", "synset", "pos", "task"]
SYNSETS = 30 * 4 + 3 + 1  # 30 a file, 3 adjectives with markers, the noun "thousand"


def test_header_skipped_and_every_synset_read():
    synsets = list(wordnet.read_synsets(FIXTURE))
    assert len(synsets) == SYNSETS
    assert len({s.id for s in synsets}) == SYNSETS  # offsets repeat across files; ids do not
    assert synsets[0].id == "00001740-n" and synsets[0].lemmas == ("entity",)
    assert synsets[0].gloss.startswith("that which is perceived")
    assert Counter(s.pos for s in synsets) == {"noun": 31, "verb": 30, "adjective": 33, "adverb": 30}


def test_parse_line_counts_in_hex_and_skips_pointers_and_frames():
    noun = (FIXTURE / "data.noun").read_text().splitlines()[-1]
    thousand = wordnet.parse_line(noun)
    assert thousand.lemmas == ("thousand", "one_thousand", "1000", "M", "K", "chiliad", "G", "grand", "thou", "yard")
    assert thousand.gloss == "the cardinal number that is the product of 10 and 100"
    verb = next(line for line in (FIXTURE / "data.verb").read_text().splitlines() if line.startswith("00002325 "))
    respire = wordnet.parse_line(verb)  # 5 pointers, then the frame "01 + 02 00"
    assert (respire.id, respire.pos, respire.lemmas) == ("00002325-v", "verb", ("respire",))
    assert respire.gloss.startswith("undergo the biomedical") and not respire.gloss.endswith(" ")
    satellite = next(s for s in wordnet.read_synsets(FIXTURE) if s.lemmas[0] == "emergent")
    assert (satellite.ss_type, satellite.pos) == ("s", "adjective")


def test_malformed_line_names_file_and_line(tmp_path):
    for name in wordnet.DATA_FILES.values():
        (tmp_path / name).write_text((FIXTURE / name).read_text())
    with (tmp_path / "data.adv").open("a") as fh:
        fh.write("00099999 02 r 03 lonely 0 002 | too few words for the count\n")
    with pytest.raises(wordnet.WordNetFormatError, match=r"data\.adv:60: "):
        list(wordnet.read_synsets(tmp_path))


def test_gloss_cut_before_the_examples():
    assert wordnet.short_gloss(
        '(usually followed by `to\') having the necessary means or skill or know-how or authority to do '
        'something; "able to swim"; "she was able to program her computer"  '
    ) == "(usually followed by `to') having the necessary means or skill or know-how or authority to do something"
    # A ";" between definition clauses stays: cutting there would leave only the qualifier.
    assert wordnet.short_gloss("especially of muscles; drawing away from the midline of the body") == (
        "especially of muscles; drawing away from the midline of the body")
    assert wordnet.short_gloss('being born or beginning; "the nascent chicks"; "a nascent insurgency"') == (
        "being born or beginning")
    assert wordnet.short_gloss("an entity that has physical existence  ") == "an entity that has physical existence"


def test_lemma_text_drops_markers_and_underscores():
    assert wordnet.lemma_text("galore(ip)") == "galore"
    assert wordnet.lemma_text("ready_to_hand(p)") == "ready to hand"
    assert wordnet.lemma_text("outback(a)") == "outback"
    assert wordnet.lemma_text("physical_entity") == "physical entity"
    assert wordnet.lemma_text("AD") == "AD"


def test_records_define_and_reverse():
    records = wordnet.build_records(FIXTURE, max_records=None)
    assert len(records) == 2 * SYNSETS
    assert all(list(r) == RECORD_KEYS and r["prompt"] and r["completion"] for r in records)
    able = [r for r in records if r["synset"] == "00001740-a"]
    gloss = "(usually followed by `to') having the necessary means or skill or know-how or authority to do something"
    assert able == [
        {"prompt": "Define: able", "completion": gloss, "synset": "00001740-a", "pos": "adjective", "task": "define"},
        {"prompt": f"Which word means: {gloss}?", "completion": "able", "synset": "00001740-a", "pos": "adjective",
         "task": "reverse"},
    ]
    physical = next(r for r in records if r["synset"] == "00001930-n" and r["task"] == "define")
    assert physical["prompt"] == "Define: physical entity"
    galore = next(r for r in records if r["synset"] == "00014358-s" and r["task"] == "reverse")
    assert galore["completion"] == "abounding" and galore["prompt"] == "Which word means: existing in abundance?"
    assert not any('"' in r["completion"] for r in records if r["task"] == "define")  # examples gone


def test_split_by_synset_no_overlap():
    splits = wordnet.build_splits(FIXTURE, max_records=None)
    assert list(splits) == list(SPLITS) and all(splits.values())
    ids = {name: {r["synset"] for r in records} for name, records in splits.items()}
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
    for records in splits.values():  # both tasks of a synset sit in the same split
        assert all(n == 2 for n in Counter(r["synset"] for r in records).values())


def test_cap_is_deterministic_uniform_and_does_not_move_synsets():
    full = wordnet.build_splits(FIXTURE, max_records=None)
    home = {r["synset"]: name for name, records in full.items() for r in records}
    capped = wordnet.build_records(FIXTURE, max_records=41)
    assert len(capped) == 40 and len({r["synset"] for r in capped}) == 20
    assert capped == wordnet.build_records(FIXTURE, max_records=41)
    assert len({r["pos"] for r in capped}) > 1  # a hash sample, not the first lines of data.noun
    assert wordnet.build_records(FIXTURE, max_records=1000) == wordnet.build_records(FIXTURE, max_records=None)
    for name, records in wordnet.build_splits(FIXTURE, max_records=41).items():
        assert all(home[r["synset"]] == name for r in records)


def test_deterministic():
    first = wordnet.build_splits(FIXTURE, max_records=60)
    second = wordnet.build_splits(FIXTURE, max_records=60)
    assert json.dumps(first) == json.dumps(second)
