"""Country facts QA from `countryinfo/data/*.json`: short exact-match answers, split by country.

Each JSON file is one country or territory (`name`, `capital`, `demonym`, `currencies`, `region`,
`callingCodes`, `tld`, `ISO` = {"alpha2", "alpha3", "numeric"}, ...). Templates turn the non-empty fields
into {"prompt", "completion", "country_iso3", "field"} records. Countries are deduplicated by ISO
alpha-3 code and split on a hash of that code, so a country's records are all in one split.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers.datasets.common import DEFAULT_FRACTIONS, split_by_key

SOURCE = "countryinfo"
VERSION = 1  # bump when templates, dedupe or the split change: the cached build is redone

# field -> (JSON key, prompt for one value, prompt for several values, answer formatter for one value).
# Several values are joined with ", " in the file's order (Bhutan's currencies -> "BTN, INR").
TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "capital": ("capital", "What is the capital of {name}?", "What are the capitals of {name}?", "{}"),
    "demonym": ("demonym", "What is the demonym of {name}?", "What are the demonyms of {name}?", "{}"),
    "currency": ("currencies", "What is the ISO 4217 currency code of {name}?",
                 "What are the ISO 4217 currency codes of {name}?", "{}"),
    "region": ("region", "In which region of the world is {name}?", "In which regions of the world is {name}?", "{}"),
    "calling_code": ("callingCodes", "What is the international calling code of {name}?",
                     "What are the international calling codes of {name}?", "+{}"),
    "tld": ("tld", "What is the country code top-level domain of {name}?",
            "What are the country code top-level domains of {name}?", "{}"),
}


def field_values(entry: dict, key: str) -> list[str]:
    """A field as a list of non-empty strings: missing, None, "" and [""] all give [] (the field is
    skipped). Strings and lists of strings both occur in the data (e.g. the Vatican's capital is a list)."""
    raw = entry.get(key)
    items = raw if isinstance(raw, list) else [raw]
    values: list[str] = []
    for item in items:
        text = str(item).strip() if item is not None else ""
        if text and text not in values:
            values.append(text)
    if key == "tld":
        # Internationalized TLDs are stored right-to-left-mangled (Algeria: "الجزائر."); keep the ASCII ones.
        values = [v for v in values if v.isascii()]
    return values


def filled_fields(entry: dict) -> int:
    return sum(bool(field_values(entry, key)) for key, *_ in TEMPLATES.values())


def iso3(entry: dict) -> str | None:
    iso = entry.get("ISO")
    code = iso.get("alpha3") if isinstance(iso, dict) else None
    return code.strip().upper() if isinstance(code, str) and code.strip() else None


def load_entries(data_dir: Path) -> list[tuple[str, dict]]:
    """(file name, parsed JSON) for every *.json in the folder, in code-point order of the file names."""
    files = sorted(Path(data_dir).glob("*.json"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no country JSON files in {data_dir}")
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in files]


def dedupe(entries: list[tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """ISO alpha-3 -> (file name, entry), one entry per code, sorted by code; entries without a code dropped.

    The data has three duplicated codes: CUW (`Curaçao.json` / `curaçao.json`, identical), VAT
    (`holy_see_vatican_city.json` / `holy_see_vatican_city_state.json`) and PSE (`palestine.json` /
    `palestine_state_of.json`). Kept: the entry with the most template fields filled, ties broken by the
    smaller file name in code-point order. So VAT keeps `holy_see_vatican_city.json` (it has a demonym),
    PSE keeps `palestine.json` (the other lacks currency, calling code, tld, demonym) and CUW keeps
    `Curaçao.json`. The rule depends only on the file contents and names, not on listing order.
    """
    kept: dict[str, tuple[str, dict]] = {}
    for name, entry in entries:
        code = iso3(entry)
        if code is None:
            continue
        if code in kept:
            old_name, old = kept[code]
            if (-filled_fields(old), old_name) <= (-filled_fields(entry), name):
                continue
        kept[code] = (name, entry)
    return dict(sorted(kept.items()))


def country_records(code: str, entry: dict) -> list[dict]:
    """The template records of one country, in TEMPLATES order, empty fields skipped."""
    name = str(entry.get("name") or "").strip()
    if not name:
        return []
    records = []
    for field, (key, one, several, answer) in TEMPLATES.items():
        values = field_values(entry, key)
        if not values:
            continue
        prompt = (one if len(values) == 1 else several).format(name=name)
        completion = ", ".join(answer.format(v) for v in values)
        records.append({"prompt": prompt, "completion": completion, "country_iso3": code, "field": field})
    return records


def build_records(data_dir: Path) -> list[dict]:
    return [r for code, (_, entry) in dedupe(load_entries(data_dir)).items() for r in country_records(code, entry)]


def build_splits(data_dir: Path, fractions: dict[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[dict]]:
    """train / validation / test records, split on a hash of the ISO alpha-3 code."""
    return split_by_key(build_records(data_dir), key=lambda r: r["country_iso3"], fractions=fractions)
