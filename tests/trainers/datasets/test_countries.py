"""Country facts builder on a slice of the real countryinfo files (see fixtures/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trainers.datasets import countries
from trainers.datasets.common import SPLITS

FIXTURE = Path(__file__).parent / "fixtures" / "countryinfo"
RECORD_KEYS = ["prompt", "completion", "country_iso3", "field"]


def by_country(records: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        out.setdefault(r["country_iso3"], {})[r["field"]] = r
    return out


def test_dedupe_by_iso3_keeps_the_fuller_entry_whatever_the_order():
    entries = countries.load_entries(FIXTURE)
    assert len(entries) == 14
    kept = countries.dedupe(entries)
    assert len(kept) == 12 and list(kept) == sorted(kept)
    assert kept["VAT"][0] == "holy_see_vatican_city.json"  # has a demonym; the "_state" file has ""
    assert kept["PSE"][0] == "palestine.json"  # the other file lacks currency, calling code, TLD, demonym
    assert countries.dedupe(list(reversed(entries))) == kept


def test_dedupe_tie_keeps_the_smaller_file_name():
    # The real CUW pair: identical entries under "Curaçao.json" and "curaçao.json" (not committed: the
    # names differ only in case). Code-point order puts "C" before "c".
    entry = {"name": "Curaçao", "capital": "Willemstad", "region": "Americas", "ISO": {"alpha3": "CUW"}}
    for order in ([("curaçao.json", entry), ("Curaçao.json", dict(entry))],
                  [("Curaçao.json", dict(entry)), ("curaçao.json", entry)]):
        assert countries.dedupe(order)["CUW"][0] == "Curaçao.json"
    assert countries.dedupe([("x.json", {"name": "No code", "capital": "Nowhere"})]) == {}


def test_records_have_the_schema_and_skip_empty_fields():
    records = countries.build_records(FIXTURE)
    assert all(list(r) == RECORD_KEYS for r in records)
    assert all(r["field"] in countries.TEMPLATES and r["prompt"] and r["completion"] for r in records)
    table = by_country(records)
    assert "ATA" not in table  # Antarctica: no template field filled
    assert set(table["HMD"]) == {"demonym", "currency", "tld"}  # capital "", region "", callingCodes [""]
    assert "capital" not in table["MAC"]  # capital ""
    assert set(table["PSE"]) == set(countries.TEMPLATES) and set(table["FRA"]) == set(countries.TEMPLATES)
    assert len({(r["country_iso3"], r["field"]) for r in records}) == len(records)


def test_templates_and_answer_formats():
    table = by_country(countries.build_records(FIXTURE))
    france = table["FRA"]
    assert france["capital"]["prompt"] == "What is the capital of France?"
    assert france["capital"]["completion"] == "Paris"
    assert france["demonym"]["completion"] == "French"
    assert france["currency"]["completion"] == "EUR"
    assert france["region"]["completion"] == "Europe"
    assert france["calling_code"]["completion"] == "+33"
    assert france["tld"]["completion"] == ".fr"
    # Several values: plural prompt, values joined in the file's order.
    assert table["BTN"]["currency"]["prompt"] == "What are the ISO 4217 currency codes of Bhutan?"
    assert table["BTN"]["currency"]["completion"] == "BTN, INR"
    assert table["JAM"]["calling_code"]["completion"] == "+1-876, +1-658"
    assert table["HMD"]["tld"]["completion"] == ".hm, .aq"
    # Afghanistan's internationalized TLD is dropped, so one value and the singular prompt.
    assert table["AFG"]["tld"]["completion"] == ".af" and "What is" in table["AFG"]["tld"]["prompt"]
    # The kept Vatican entry stores its capital as a list.
    assert table["VAT"]["capital"]["completion"] == "Vatican City"
    assert table["VAT"]["capital"]["prompt"] == "What is the capital of Vatican City State?"


def test_split_by_country_no_overlap_and_stable():
    splits = countries.build_splits(FIXTURE)
    assert list(splits) == list(SPLITS)
    codes = {name: {r["country_iso3"] for r in records} for name, records in splits.items()}
    assert not (codes["train"] & codes["validation"] or codes["train"] & codes["test"]
                or codes["validation"] & codes["test"])
    assert set().union(*codes.values()) == set(by_country(countries.build_records(FIXTURE)))
    # Pinned: the split is a hash of the code alone, the same on every machine and in every slice.
    assert codes["validation"] == {"MEX", "TKL"}
    assert codes["test"] == {"AGO", "MAC", "PSE"}


def test_deterministic_and_independent_of_the_folder(tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(FIXTURE, copy)
    (copy / "extra.txt").write_text("not a country")
    first, second = countries.build_splits(FIXTURE), countries.build_splits(copy)
    assert json.dumps(first, ensure_ascii=False) == json.dumps(second, ensure_ascii=False)
