"""The record format of the table-to-text data (E2E, DART, WebNLG 2017) and the converters
from each distribution's raw entries to it.

Every source of :mod:`pst.repro.data.nlg` and the synthetic generator
(:mod:`pst.repro.data.synthetic.nlg`) produce rows through these functions, so synthetic and
real records cannot drift apart.

The linearisation follows LoRA's data preparation (microsoft/LoRA,
``examples/NLG/src/format_converting_{e2e,dart,webnlg}.py`` and its prepared
``data/e2e/*.txt``), which the PST recipe reuses:

* E2E: ``name[Blue Spice], eatType[coffee shop]`` -> ``name : Blue Spice | Type : coffee shop``,
  attributes kept in the order of the meaning representation (the original data
  already uses the canonical order name, eatType, food, priceRange, customer rating,
  area, familyFriendly, near), with ``eatType``->``Type``, ``priceRange``->``price``,
  ``familyFriendly``->``family friendly``.
* DART: ``subject : property : object`` joined by `` | ``, property lower-cased.
* WebNLG: the ``modifiedtripleset`` as ``subject : property : object`` joined by
  `` | ``, entities left exactly as in the JSON (LoRA does not replace underscores or
  strip quotes), and only lexicalisations whose ``comment`` is ``"good"``.

Known differences from LoRA's files (checked on E2E dev+test and WebNLG/DART dev):
LoRA's E2E ``*.txt`` come pre-tokenised from upstream (``Blue Spice .``, ``is n't``,
``£ 20 - 25``), while the hub and the original csv are not; only the three price
values ``£20-25``, ``less than £20``, ``more than £30`` then differ in the context,
and references keep their original spelling. For byte-identical LoRA inputs, point
``data_dir`` at a folder with LoRA's ``train.txt``/``valid.txt``/``test.txt``.
References are whitespace-stripped (LoRA's DART data keeps one trailing space).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets

DATASET_NAMES = ("e2e", "dart", "webnlg")
SPLITS = ("train", "validation", "test")

E2E_KEY_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
"""E2E attribute renames of LoRA's prepared files; other keys (name, food, customer
rating, area, near) are written as they are."""

WEBNLG_SEEN_CATEGORIES = (
    "Airport",
    "Astronaut",
    "Building",
    "City",
    "ComicsCharacter",
    "Food",
    "Monument",
    "SportsTeam",
    "University",
    "WrittenWork",
)
"""The ten WebNLG 2017 training categories; test entries of other categories are 'unseen'."""

_BASE_FEATURES = datasets.Features({"context": datasets.Value("string"), "target": datasets.Value("string")})
_WEBNLG_FEATURES = datasets.Features(
    {**_BASE_FEATURES, "category": datasets.Value("string"), "seen": datasets.Value("bool")}
)
_MR_ATTRIBUTE = re.compile(r"\s*([^\[\],][^\[\]]*?)\s*\[([^\]]*)\]\s*(?:,|$)")

Row = dict[str, Any]


# --------------------------------------------------------------------------- linearisation


def parse_e2e_mr(mr: str) -> list[tuple[str, str]]:
    """Split an E2E meaning representation ``key[value], ...`` into (key, value) pairs.

    Values may contain commas; the brackets delimit them.
    """
    attributes: list[tuple[str, str]] = []
    position = 0
    while position < len(mr):
        match = _MR_ATTRIBUTE.match(mr, position)
        if match is None:
            raise ValueError(
                f"malformed E2E meaning representation {mr!r} at character {position}; "
                "expected 'key[value], key[value], ...'"
            )
        attributes.append((match.group(1), match.group(2)))
        position = match.end()
    if not attributes:
        raise ValueError(f"empty E2E meaning representation {mr!r}; expected 'key[value], ...'")
    return attributes


def linearise_e2e_mr(mr: str) -> str:
    """E2E meaning representation -> LoRA's ``key : value | ...`` context, keeping the MR's order."""
    return " | ".join(f"{E2E_KEY_NAMES.get(key, key)} : {value}" for key, value in parse_e2e_mr(mr))


def linearise_triples(triples: Iterable[Sequence[str]], lowercase_property: bool = False) -> str:
    """(subject, property, object) triples -> ``s : p : o | ...``.

    DART lower-cases the property (LoRA's converter does); WebNLG keeps it.
    """
    parts = []
    for triple in triples:
        if len(triple) != 3:
            raise ValueError(f"triple {list(triple)!r} has {len(triple)} items; expected subject, property, object")
        subject, prop, obj = triple
        parts.append(f"{subject} : {prop.lower() if lowercase_property else prop} : {obj}")
    if not parts:
        raise ValueError("empty triple set; expected at least one (subject, property, object) triple")
    return " | ".join(parts)


# --------------------------------------------------------------------------- raw entries -> rows


def e2e_rows(mrs: Iterable[str], references: Iterable[str]) -> list[Row]:
    """One row per (meaning representation, reference) line of the original E2E csv."""
    return [{"context": linearise_e2e_mr(mr), "target": ref.strip()} for mr, ref in zip(mrs, references, strict=True)]


def _annotation_texts(annotations: Any) -> list[str]:
    """DART annotations as texts: JSON gives a list of dicts, the hub a dict of lists."""
    if isinstance(annotations, Mapping):
        return list(annotations["text"])
    return [annotation["text"] for annotation in annotations]


def dart_rows(entries: Iterable[Mapping[str, Any]]) -> list[Row]:
    """One row per annotation of each DART entry (``tripleset``, ``annotations``)."""
    rows = []
    for entry in entries:
        context = linearise_triples(entry["tripleset"], lowercase_property=True)
        rows.extend({"context": context, "target": text.strip()} for text in _annotation_texts(entry["annotations"]))
    return rows


def _webnlg_entry_body(entry: Mapping[str, Any], index: int) -> Mapping[str, Any]:
    """LoRA's JSON wraps each entry as ``{"<1-based index>": {...}}``; unwrap it."""
    if "modifiedtripleset" in entry:
        return entry
    if len(entry) != 1:
        raise ValueError(
            f"WebNLG entry {index} has keys {sorted(entry)!r}; expected one key wrapping the entry "
            "(LoRA's challenge-2017 JSON format) or an entry with 'modifiedtripleset'"
        )
    return next(iter(entry.values()))


def webnlg_rows(document: Mapping[str, Any]) -> list[Row]:
    """One row per good lexicalisation of each WebNLG entry (LoRA's challenge-2017 JSON)."""
    if "entries" not in document:
        raise ValueError(f"WebNLG JSON has keys {sorted(document)!r}; expected a top-level 'entries' list")
    rows = []
    for index, wrapped in enumerate(document["entries"]):
        entry = _webnlg_entry_body(wrapped, index)
        triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
        context = linearise_triples(triples)
        category = entry["category"]
        seen = category in WEBNLG_SEEN_CATEGORIES
        for lex in entry["lexicalisations"]:
            if lex.get("comment") == "good":
                rows.append({"context": context, "target": lex["lex"].strip(), "category": category, "seen": seen})
    return rows


def e2e_lora_rows(lines: Iterable[str]) -> list[Row]:
    """Rows from LoRA's prepared E2E text (``context||reference`` per line)."""
    rows = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if "||" not in line:
            raise ValueError(f"line {number} of a LoRA E2E file has no '||' separator: {line[:80]!r}")
        context, target = line.split("||", 1)
        rows.append({"context": context.strip(), "target": target.strip()})
    return rows


def rows_to_dataset(name: str, rows: list[Row]) -> datasets.Dataset:
    """Rows -> Dataset with the fixed record schema of ``name``."""
    features = _WEBNLG_FEATURES if name == "webnlg" else _BASE_FEATURES
    if not rows:
        return datasets.Dataset.from_dict({column: [] for column in features}, features=features)
    return datasets.Dataset.from_list(rows, features=features)



def check_choice(value: str, accepted: Sequence[str], what: str) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")
