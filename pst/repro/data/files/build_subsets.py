"""Rebuild the bundled subsets from snapshots of their public sources (not shipped, not imported).

Run it with the source repositories checked out side by side (``--sources DIR`` holding
``tuetschek+e2e-dataset``, ``Yale-LILY+dart``, ``jonny-vr+LLMCBench``, ``korjak+sts-dev``, each a
git directory) to regenerate exactly the files beside it; README.md says what each is.
Every selection is a seeded sample of whole entries (an E2E meaning representation with all
its references, a DART entry, a GLUE row), so splits never share an input.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).parent
SEED = 0

#: (repository folder, commit, path) of every source file.
SOURCES = {
    "e2e_dev": ("tuetschek+e2e-dataset", "ab0d967dd5729ce455ef14ba9ffafc456a335264", "devset.csv"),
    "e2e_test": ("tuetschek+e2e-dataset", "ab0d967dd5729ce455ef14ba9ffafc456a335264", "testset_w_refs.csv"),
    "dart_dev": ("Yale-LILY+dart", "bb644b12ec1d0264f96a31145534b9a94f6ff5f5", "data/v1.1.1/dart-v1.1.1-full-dev.json"),
    "dart_test": ("Yale-LILY+dart", "bb644b12ec1d0264f96a31145534b9a94f6ff5f5", "data/v1.1.1/dart-v1.1.1-full-test.xml"),
    "qnli_dev": ("jonny-vr+LLMCBench", "720be179c2492271f61d7a09291ffd003f36f47d", "data/QNLI/dev.tsv"),
    "stsb_train": ("korjak+sts-dev", "5c830c7afb02a63218fe0e3ff85474c36d95d674", "data/STS-B/train.tsv"),
    "stsb_dev": ("korjak+sts-dev", "5c830c7afb02a63218fe0e3ff85474c36d95d674", "data/STS-B/dev.tsv"),
}
#: DART's own annotations; the webnlg (CC BY-NC-SA) and e2e partitions are left out.
DART_OWN_SOURCES = {"WikiSQL_decl_sents", "WikiSQL_lily", "WikiTableQuestions_lily", "WikiTableQuestions_mturk"}
#: STS-B rows whose text licence permits redistribution: PASCAL VOC image captions (CC BY-SA).
STSB_FILES = {"images"}

SIZES = {
    "e2e": {"train": 160, "validation": 40, "test": 80},  # meaning representations
    "dart": {"train": 340, "validation": 81, "test": 120},  # entries
    "qnli": {"train": 3000, "validation": 872},  # rows
}


def show(sources: Path, key: str) -> str:
    folder, commit, path = SOURCES[key]
    git_dir = sources / folder
    git_dir = git_dir / "repo" if (git_dir / "repo").exists() else git_dir
    return subprocess.run(["git", "--git-dir", str(git_dir / ".git") if (git_dir / ".git").is_dir() else str(git_dir),
                           "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout


def e2e(sources: Path) -> None:
    out = HERE / "e2e"
    out.mkdir(exist_ok=True)
    rng = random.Random(SEED)
    dev = list(csv.DictReader(io.StringIO(show(sources, "e2e_dev"))))
    test = list(csv.DictReader(io.StringIO(show(sources, "e2e_test"))))
    dev_mrs = list(dict.fromkeys(r["mr"] for r in dev))
    chosen = rng.sample(dev_mrs, SIZES["e2e"]["train"] + SIZES["e2e"]["validation"])
    train_mrs, valid_mrs = set(chosen[: SIZES["e2e"]["train"]]), set(chosen[SIZES["e2e"]["train"]:])
    test_mrs = set(rng.sample(list(dict.fromkeys(r["mr"] for r in test)), SIZES["e2e"]["test"]))
    for name, rows, keep in (("trainset.csv", dev, train_mrs), ("devset.csv", dev, valid_mrs),
                             ("testset_w_refs.csv", test, test_mrs)):
        with (out / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["mr", "ref"], quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writeheader()
            writer.writerows({"mr": r["mr"], "ref": r["ref"]} for r in rows if r["mr"] in keep)


def _dart_test_entries(xml_text: str) -> list[dict]:
    """The XML release as the JSON schema (tripleset, annotations with source and text)."""
    entries = []
    for entry in ET.fromstring(xml_text).find("entries").findall("entry"):
        triples = [[part.strip() for part in t.text.split(" | ")] for t in entry.find("modifiedtripleset").findall("mtriple")]
        annotations = [{"source": lex.get("comment"), "text": lex.text or ""} for lex in entry.findall("lex")]
        if all(len(t) == 3 for t in triples):
            entries.append({"tripleset": triples, "annotations": annotations})
    return entries


def _grouped(items: list, key) -> list[list]:
    """Items grouped by ``key`` (first-appearance order), so a split takes whole groups."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def dart(sources: Path) -> None:
    """Whole triple sets per split: the dev file repeats some with other annotations."""
    out = HERE / "dart"
    out.mkdir(exist_ok=True)
    rng = random.Random(SEED)

    def own(entries: list[dict]) -> list[dict]:
        return [e for e in entries if {a["source"] for a in e["annotations"]} <= DART_OWN_SOURCES]

    def key(entry: dict) -> str:
        return json.dumps([[part.lower() for part in triple] for triple in entry["tripleset"]])

    groups = _grouped(own(json.loads(show(sources, "dart_dev"))), key)
    rng.shuffle(groups)
    splits = {"train": [], "dev": []}
    for group in groups:
        split = "train" if len(splits["train"]) < SIZES["dart"]["train"] else "dev"
        splits[split] += group
    seen = {key(e) for entries in splits.values() for e in entries}
    test = [g for g in _grouped(own(_dart_test_entries(show(sources, "dart_test"))), key) if key(g[0]) not in seen]
    splits["test"] = [e for g in rng.sample(test, SIZES["dart"]["test"]) for e in g]
    for split, entries in splits.items():
        (out / f"dart-v1.1.1-full-{split}.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n",
                                                            encoding="utf-8")


def _tsv(text: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    return lines[0], lines[1:]


def _components(rows: list[list[str]]) -> list[list[list[str]]]:
    """Rows linked by a shared question or sentence (QNLI pairs one with several of the other)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in rows:
        parent[find("q:" + row[1])] = find("s:" + row[2])
    return _grouped(rows, lambda row: find("q:" + row[1]))


def qnli(sources: Path) -> None:
    """Whole components per split, so no question or sentence is in both."""
    out = HERE / "glue" / "QNLI"
    out.mkdir(parents=True, exist_ok=True)
    header, rows = _tsv(show(sources, "qnli_dev"))
    components = _components([row.split("\t") for row in rows])
    random.Random(SEED).shuffle(components)
    splits = {"train.tsv": [], "dev.tsv": []}
    for component in components:
        for name, limit in (("train.tsv", SIZES["qnli"]["train"]), ("dev.tsv", SIZES["qnli"]["validation"])):
            if len(splits[name]) < limit:
                splits[name] += ["\t".join(row) for row in component]
                break
    for name, part in splits.items():
        (out / name).write_text("\n".join([header, *part]) + "\n", encoding="utf-8")


def stsb(sources: Path) -> None:
    out = HERE / "glue" / "STS-B"
    out.mkdir(parents=True, exist_ok=True)
    for key, name in (("stsb_train", "train.tsv"), ("stsb_dev", "dev.tsv")):
        header, rows = _tsv(show(sources, key))
        kept = [row for row in rows if row.split("\t")[2] in STSB_FILES]
        (out / name).write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=Path, required=True, help="folder holding the source repositories' git directories")
    sources = parser.parse_args().sources
    for build in (e2e, dart, qnli, stsb):
        build(sources)


if __name__ == "__main__":
    main()
