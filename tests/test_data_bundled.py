"""The real subsets shipped with the package: splits, sizes, labels, licences, and the
evaluation-only folders that the loaders accept."""

from __future__ import annotations

import fnmatch
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from pst.repro.data import bundled
from pst.repro.data.glue import load_glue
from pst.repro.data.nlg import group_references, load_nlg

ROOT = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = (".csv", ".json", ".tsv")


def _data_files() -> list[Path]:
    return sorted(p for p in bundled.FILES_DIR.rglob("*") if p.suffix in DATA_SUFFIXES)


# --------------------------------------------------------------------------- GLUE


@pytest.mark.parametrize(("task", "sizes"), [("qnli", {"train": 3002, "validation": 873}),
                                             ("stsb", {"train": 1000, "validation": 250})])
def test_bundled_glue_splits_and_sizes(task: str, sizes: dict[str, int]) -> None:
    data = load_glue(task, "bundled")
    assert {split: data[split].num_rows for split in data} == sizes


def test_bundled_qnli_labels_are_balanced_and_splits_disjoint() -> None:
    data = load_glue("qnli", "bundled")
    for split in data.values():
        share = sum(split["label"]) / split.num_rows
        assert 0.45 < share < 0.55  # majority class near 50%: accuracy above ~55% is learning
    train_pairs = set(zip(data["train"]["question"], data["train"]["sentence"]))
    assert not train_pairs & set(zip(data["validation"]["question"], data["validation"]["sentence"]))


def test_bundled_stsb_scores_span_the_scale() -> None:
    scores = load_glue("stsb", "bundled")["validation"]["label"]
    assert min(scores) >= 0 and max(scores) <= 5 and max(scores) - min(scores) > 4


@pytest.mark.parametrize("task", ["sst2", "rte", "mnli", "cola", "mrpc", "qqp"])
def test_unshipped_glue_task_says_why(task: str) -> None:
    with pytest.raises(ValueError, match=rf"no bundled data for GLUE task '{task}': .*bundled: \['qnli', 'stsb'\]"):
        load_glue(task, "bundled")


# --------------------------------------------------------------------------- NLG


@pytest.mark.parametrize(("name", "rows", "inputs"), [
    ("e2e", {"train": 1368, "validation": 340, "test": 607}, {"train": 160, "validation": 40, "test": 80}),
    ("dart", {"train": 341, "validation": 81, "test": 121}, {"train": 336, "validation": 81, "test": 120}),
])
def test_bundled_nlg_splits_sizes_and_disjoint_inputs(name: str, rows: dict, inputs: dict) -> None:
    data = load_nlg(name, "bundled")
    assert {split: data[split].num_rows for split in data} == rows
    contexts = {split: group_references(data[split])[0] for split in data}
    assert {split: len(c) for split, c in contexts.items()} == inputs
    assert not set(contexts["train"]) & (set(contexts["validation"]) | set(contexts["test"]))


def test_bundled_dart_holds_only_darts_own_annotations() -> None:
    """DART's webnlg (CC BY-NC-SA) and e2e partitions are not redistributed under MIT here."""
    for path in sorted((bundled.FILES_DIR / "dart").glob("*.json")):
        sources = {a["source"] for entry in json.loads(path.read_text()) for a in entry["annotations"]}
        assert sources and not sources & {"webnlg", "e2e"}, path.name


def test_webnlg_is_not_shipped_and_the_error_says_why() -> None:
    with pytest.raises(ValueError, match="CC BY-NC-SA 4.0"):
        load_nlg("webnlg", "bundled")


# --------------------------------------------------------------------------- evaluation-only folders


def test_glue_folder_without_train_loads_for_evaluation(tmp_path: Path) -> None:
    folder = tmp_path / "QNLI"
    folder.mkdir()
    shutil.copy(bundled.FILES_DIR / "glue" / "QNLI" / "dev.tsv", folder / "dev.tsv")
    data = load_glue("qnli", "local", data_dir=tmp_path, splits=("validation",))
    assert list(data) == ["validation"] and data["validation"].num_rows == 873
    with pytest.raises(FileNotFoundError, match=r"no train\.tsv.*pass splits=\('validation',\)"):
        load_glue("qnli", "local", data_dir=tmp_path)


def test_nlg_folder_without_train_loads_for_evaluation(tmp_path: Path) -> None:
    shutil.copy(bundled.FILES_DIR / "dart" / "dart-v1.1.1-full-test.json", tmp_path)
    data = load_nlg("dart", "local", data_dir=tmp_path, splits=["test"])
    assert list(data) == ["test"] and data["test"].num_rows == 121
    with pytest.raises(FileNotFoundError, match=r"dart-v1\.1\.1-full-train\.json.*to evaluate only, pass splits="):
        load_nlg("dart", "local", data_dir=tmp_path)


def test_bad_splits_are_named() -> None:
    with pytest.raises(ValueError, match=r"GLUE qnli has no split\(s\) \['test'\]"):
        load_glue("qnli", "bundled", splits=("test",))
    with pytest.raises(ValueError, match="got the string 'validation'"):
        load_glue("qnli", "bundled", splits="validation")
    with pytest.raises(ValueError, match=r"unknown NLG split\(s\) \['dev'\]"):
        load_nlg("e2e", "bundled", splits=("dev",))


def test_splits_narrow_every_source() -> None:
    assert list(load_glue("sst2", "synthetic", splits=("validation",))) == ["validation"]
    assert list(load_nlg("webnlg", "synthetic", splits=("test",))) == ["test"]


# --------------------------------------------------------------------------- corpus, packaging


def test_pretraining_corpus_is_training_text_only() -> None:
    corpus = set(bundled.pretraining_corpus())
    validation = load_glue("qnli", "bundled", splits=("validation",))["validation"]
    held_out = set(validation["question"]) | set(validation["sentence"])
    for name in bundled.NLG_DATASETS:
        test = load_nlg(name, "bundled", splits=("test",))["test"]
        held_out |= set(test["target"]) | set(test["context"])
    assert len(corpus) > 5000 and len(held_out) > 1500
    assert not corpus & held_out
    # STS-B's official train and dev splits pair some of the same image captions (as distributed).
    stsb = load_glue("stsb", "bundled", splits=("validation",))["validation"]
    captions = set(stsb["sentence1"]) | set(stsb["sentence2"])
    assert len(corpus & captions) / len(captions) < 0.25


def test_every_shipped_file_is_documented_and_packaged() -> None:
    readme = (bundled.FILES_DIR / "README.md").read_text()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pst.repro.data"]
    files = _data_files()
    assert len(files) == 10
    for path in files:
        relative = path.relative_to(bundled.FILES_DIR).as_posix()
        assert f"`{relative}`" in readme, relative
        assert any(fnmatch.fnmatch(relative, pattern.removeprefix("files/")) for pattern in patterns), relative
    assert sum(p.stat().st_size for p in files) < 3_000_000
