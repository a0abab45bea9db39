"""Synthetic E2E, DART and WebNLG data for smoke runs and tests (no download).

The generators write *raw* entries in each dataset's real format (E2E meaning
representations ``key[value], ...``, DART ``tripleset``/``annotations`` entries,
WebNLG challenge-2017 JSON entries) and pass them through the same converters as the
real data, so the synthetic records exercise the real parsing and have exactly the
real record format.

References come from a few fixed templates per attribute or property, so a tiny GPT-2
learns the mapping in a few hundred steps. Each input has two or three references
(several references per input, as in the real test sets). WebNLG test inputs are
half from seen categories, half from categories absent from train/validation.

``sizes`` counts distinct *inputs* per split; the number of rows (one per reference)
is about 2.5 times larger. Inputs never repeat within or across splits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import datasets

from ..nlg_records import (
    DATASET_NAMES,
    SPLITS,
    WEBNLG_SEEN_CATEGORIES,
    check_choice,
    dart_rows,
    e2e_rows,
    rows_to_dataset,
    webnlg_rows,
)

logger = logging.getLogger(__name__)

DEFAULT_SIZES = {"train": 300, "validation": 40, "test": 40}

# ----------------------------------------------------------------------------- E2E

E2E_VALUES: dict[str, tuple[str, ...]] = {
    "name": ("Blue Spice", "The Vaults", "Alimentum", "The Mill", "Zizzi", "Aromi", "The Punter", "Cotto"),
    "eatType": ("coffee shop", "pub", "restaurant"),
    "food": ("Italian", "French", "Chinese", "English", "Indian", "Japanese"),
    "priceRange": ("cheap", "moderate", "high"),
    "customer rating": ("low", "average", "high"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
    "near": ("Burger King", "Cafe Rouge", "The Bakers", "Crowne Plaza Hotel", "Raja Indian Cuisine"),
}
"""Attribute values, in the canonical E2E attribute order."""

_E2E_OPTIONAL = ("food", "priceRange", "customer rating", "area", "familyFriendly", "near")

# Two phrasings per optional attribute; phrase style k is used by reference template k % 2.
_E2E_PHRASES: dict[str, tuple[str, str]] = {
    "food": ("serving {} food", "with {} food"),
    "priceRange": ("with {} prices", "in the {} price range"),
    "customer rating": ("rated {} by customers", "with a {} customer rating"),
    "area": ("in the {}", "located in the {}"),
    "familyFriendly": ("", ""),  # filled by _family_phrase
    "near": ("near {}", "close to {}"),
}


def _family_phrase(value: str, style: int) -> str:
    if style == 0:
        return "that is family friendly" if value == "yes" else "that is not family friendly"
    return "welcoming children" if value == "yes" else "not suitable for children"


def _e2e_clauses(attributes: Mapping[str, str], style: int) -> list[str]:
    clauses = []
    for key in _E2E_OPTIONAL:
        if key not in attributes:
            continue
        if key == "familyFriendly":
            clauses.append(_family_phrase(attributes[key], style))
        else:
            clauses.append(_E2E_PHRASES[key][style].format(attributes[key]))
    return clauses


def _e2e_reference(attributes: Mapping[str, str], template: int) -> str:
    """Template 0: '<name> is a <type> ...'; 1: 'There is a <type> called <name> ...'; 2: '<name> , a <type> , ...'."""
    name, eat_type = attributes["name"], attributes["eatType"]
    clauses = _e2e_clauses(attributes, template % 2)
    if template == 0:
        head, joiner = f"{name} is a {eat_type}", " "
    elif template == 1:
        head, joiner = f"There is a {eat_type} called {name}", " "
    else:
        head, joiner = f"{name} , a {eat_type} ,", " , "
    body = joiner.join(clauses)
    return f"{head} {body} ." if body else f"{head} ."


def _e2e_entry(rng: random.Random) -> tuple[str, list[str]]:
    """One meaning representation (original E2E syntax) and its 2-3 references."""
    chosen = [key for key in _E2E_OPTIONAL if rng.random() < 0.5] or [rng.choice(_E2E_OPTIONAL)]
    keys = ["name", "eatType", *chosen]
    attributes = {key: rng.choice(E2E_VALUES[key]) for key in keys}
    mr = ", ".join(f"{key}[{attributes[key]}]" for key in keys)
    references = [_e2e_reference(attributes, template) for template in range(rng.choice((2, 3)))]
    return mr, references


def _e2e_split(rng: random.Random, size: int, used: set[str], split: str) -> list[dict[str, Any]]:
    mrs: list[str] = []
    refs: list[str] = []
    for mr, references in _unique_entries(lambda: _e2e_entry(rng), size, used, split):
        mrs.extend([mr] * len(references))
        refs.extend(references)
    return e2e_rows(mrs, refs)


# ----------------------------------------------------------------------------- triples (DART, WebNLG)

# property -> (object values, two sentence templates with {s} subject and {o} object)
_PROPERTIES: dict[str, tuple[tuple[str, ...], tuple[str, str]]] = {
    "country": (("France", "Japan", "Brazil", "Canada"), ("{s} is in {o} .", "{s} is located in the country {o} .")),
    "location": (("Paris", "Osaka", "Lyon", "Toronto"), ("{s} is located in {o} .", "{s} can be found in {o} .")),
    "leaderName": (("Anna Berg", "Paul Roux", "Ken Sato"), ("The leader of {s} is {o} .", "{s} is led by {o} .")),
    "populationTotal": (("12000", "540000", "98000"), ("{s} has a population of {o} .", "The population of {s} is {o} .")),
    "runwayLength": (("2702.0", "3100.0", "1850.0"), ("The runway of {s} is {o} long .", "{s} has a runway length of {o} .")),
    "cityServed": (("Paris", "Osaka", "Lyon"), ("{s} serves the city of {o} .", "{s} serves {o} .")),
    "architect": (("Mia Holt", "Ivo Lang"), ("{s} was designed by {o} .", "The architect of {s} is {o} .")),
    "floorCount": (("12", "40", "7"), ("{s} has {o} floors .", "There are {o} floors in {s} .")),
    "ingredient": (("rice", "cheese", "tomato"), ("{s} contains {o} .", "One ingredient of {s} is {o} .")),
    "region": (("Provence", "Kansai", "Bahia"), ("{s} comes from the {o} region .", "{s} is a dish from {o} .")),
    "numberOfStudents": (("8000", "21000"), ("{s} has {o} students .", "There are {o} students at {s} .")),
    "club": (("FC Lyon", "Osaka United"), ("{s} plays for {o} .", "{s} is a player of {o} .")),
    "genre": (("jazz", "rock", "folk"), ("{s} plays {o} music .", "The genre of {s} is {o} .")),
    "party": (("Green Party", "Labour Party"), ("{s} is a member of the {o} .", "{s} belongs to the {o} .")),
}

# category -> (subjects as WebNLG writes entities, properties used)
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Airport": (("Aarhus_Airport", "Blue_Lake_Airport", "North_Field_Airport"), ("runwayLength", "cityServed", "country")),
    "City": (("Port_Elm", "New_Bray", "Castor_City"), ("country", "leaderName", "populationTotal")),
    "Building": (("Grand_Tower", "Old_Mill_House", "River_Hall"), ("architect", "floorCount", "location")),
    "Food": (("Bean_Stew", "Rice_Cake", "Fish_Pie"), ("ingredient", "region", "country")),
    "University": (("Elm_University", "Bray_Institute"), ("numberOfStudents", "country", "location")),
    # unseen in WebNLG 2017 training: new entities and one new property each, the
    # other properties shared with seen categories (as DBpedia properties are)
    "Athlete": (("Tom_Reyes", "Lena_Park", "Omar_Diaz"), ("club", "country", "location")),
    "Artist": (("The_Blue_Notes", "Ada_Quinn"), ("genre", "country", "location")),
    "Politician": (("Marc_Olsen", "Rita_Vance"), ("party", "country", "leaderName")),
}
_SEEN = tuple(c for c in _CATEGORIES if c in WEBNLG_SEEN_CATEGORIES)
_UNSEEN = tuple(c for c in _CATEGORIES if c not in WEBNLG_SEEN_CATEGORIES)


def _sentence(subject: str, prop: str, obj: str, style: int) -> str:
    return _PROPERTIES[prop][1][style].format(s=subject.replace("_", " "), o=obj.replace("_", " "))


def _triples_entry(rng: random.Random, category: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """1-3 triples about one subject of ``category`` and 2-3 template references."""
    subjects, properties = _CATEGORIES[category]
    subject = rng.choice(subjects)
    chosen = rng.sample(properties, rng.randint(1, len(properties)))
    triples = [(subject, prop, rng.choice(_PROPERTIES[prop][0])) for prop in chosen]
    references = []
    for template in range(rng.choice((2, 3))):
        styles = [template % 2] * len(triples) if template < 2 else [i % 2 for i in range(len(triples))]
        references.append(" ".join(_sentence(s, p, o, style) for (s, p, o), style in zip(triples, styles)))
    return triples, references


def _webnlg_split(rng: random.Random, size: int, used: set[str], split: str) -> list[dict[str, Any]]:
    """WebNLG entries in LoRA's JSON layout; test draws half from unseen categories."""
    def draw() -> tuple[Any, list[str]]:
        pool = _UNSEEN if split == "test" and rng.random() < 0.5 else _SEEN
        category = rng.choice(pool)
        triples, references = _triples_entry(rng, category)
        return (category, triples), references

    entries = []
    for index, ((category, triples), references) in enumerate(_unique_entries(draw, size, used, split), start=1):
        lexicalisations = [{"comment": "good", "lex": ref, "lang": "", "xml_id": f"Id{i}"} for i, ref in enumerate(references, 1)]
        if rng.random() < 0.2:  # a 'toFix' lexicalisation, dropped like in the real data
            lexicalisations.append({"comment": "toFix", "lex": references[0].upper(), "lang": "", "xml_id": "IdX"})
        body = {
            "category": category,
            "lexicalisations": lexicalisations,
            "modifiedtripleset": [{"subject": s, "property": p, "object": o} for s, p, o in triples],
            "size": str(len(triples)),
        }
        entries.append({str(index): body})
    return webnlg_rows({"entries": entries})


def _dart_split(rng: random.Random, size: int, used: set[str], split: str) -> list[dict[str, Any]]:
    """DART v1.1.1 entries: properties upper-case as in its table-derived triples."""
    def draw() -> tuple[Any, list[str]]:
        category = rng.choice(tuple(_CATEGORIES))
        triples, references = _triples_entry(rng, category)
        tripleset = [[s.replace("_", " "), p.upper(), o] for s, p, o in triples]
        return tripleset, references

    entries = [
        {
            "tripleset": tripleset,
            "subtree_was_extended": False,
            "annotations": [{"source": "synthetic", "text": ref} for ref in references],
        }
        for tripleset, references in _unique_entries(draw, size, used, split)
    ]
    return dart_rows(entries)


# ----------------------------------------------------------------------------- driver


def _unique_entries(
    draw: Callable[[], tuple[Any, list[str]]], size: int, used: set[str], split: str
) -> list[tuple[Any, list[str]]]:
    """``size`` draws whose inputs were not drawn before (in any split)."""
    entries = []
    for _ in range(100 * size + 100):
        if len(entries) == size:
            break
        key, references = draw()
        if repr(key) not in used:
            used.add(repr(key))
            entries.append((key, references))
    if len(entries) < size:
        raise ValueError(f"cannot draw {size} distinct synthetic inputs for split {split!r}; ask for fewer")
    return entries


_SPLIT_BUILDERS = {"e2e": _e2e_split, "dart": _dart_split, "webnlg": _webnlg_split}


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    unknown = [split for split in sizes if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown splits {unknown!r} in sizes; accepted: {', '.join(SPLITS)}")
    merged = {**DEFAULT_SIZES, **sizes}
    for split, size in merged.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"sizes[{split!r}]={size!r}; expected a non-negative int")
    return merged


def synthetic_nlg(name: str, sizes: Mapping[str, int] | None = None, seed: int = 0) -> datasets.DatasetDict:
    """Deterministic synthetic E2E/DART/WebNLG in the record format of :mod:`pst.repro.data.nlg`.

    ``sizes`` maps split -> number of distinct inputs (missing splits use
    :data:`DEFAULT_SIZES`). The same (name, sizes, seed) always gives the same data.
    """
    check_choice(name, DATASET_NAMES, "NLG dataset")
    sizes = _check_sizes(sizes or {})
    rng = random.Random(f"pst-synthetic-nlg:{name}:{seed}")
    used: set[str] = set()
    splits = {}
    for split in SPLITS:
        rows = _SPLIT_BUILDERS[name](rng, sizes[split], used, split)
        splits[split] = rows_to_dataset(name, rows)
        logger.debug("synthetic %s/%s: %d inputs, %d rows", name, split, sizes[split], len(rows))
    return datasets.DatasetDict(splits)


def synthetic_nlg_corpus(seed: int = 0) -> list[str]:
    """Texts to train the smoke runs' BPE tokenizer: every context and reference of all
    three synthetic datasets (default sizes), each once, in a fixed order."""
    texts: dict[str, None] = {}
    for name in DATASET_NAMES:
        for split in synthetic_nlg(name, seed=seed).values():
            texts.update(dict.fromkeys(split["context"]))
            texts.update(dict.fromkeys(split["target"]))
    return list(texts)
