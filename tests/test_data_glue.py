"""GLUE data sources (local files in the real GLUE layouts, the hub path, synthetic) and tokenization."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from scipy.sparse import hstack
from scipy.stats import pearsonr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

import pst.repro.data.glue as glue_module
from pst.repro.data.glue import GLUE_TASKS, get_task, glue_features, load_glue, tokenize_glue
from pst.repro.data.synthetic.glue import VOCABULARY, synthetic_corpus, synthetic_glue

EXPECTED_TEXT_KEYS = {
    "sst2": ("sentence",), "cola": ("sentence",),
    "mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "qnli": ("question", "sentence"), "mnli": ("premise", "hypothesis"),
}


# --------------------------------------------------------------------------- task table


def test_task_table() -> None:
    assert set(GLUE_TASKS) == set(EXPECTED_TEXT_KEYS)
    for name, task in GLUE_TASKS.items():
        assert task.text_keys == EXPECTED_TEXT_KEYS[name]
        assert task.eval_splits == (("validation_matched", "validation_mismatched") if name == "mnli"
                                    else ("validation",))
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert all(GLUE_TASKS[t].num_labels == 2 and not GLUE_TASKS[t].is_regression
               for t in ("qqp", "qnli", "sst2", "cola", "mrpc", "rte"))


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'wnli'.*\['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', 'stsb'\]"):
        load_glue("wnli", "synthetic")


def test_unknown_source_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'s3'.*'hub', 'local', 'bundled', 'synthetic'"):
        load_glue("sst2", "s3")


def test_local_needs_a_data_dir() -> None:
    with pytest.raises(ValueError, match="data_dir"):
        load_glue("sst2", "local")


# --------------------------------------------------------------------------- local GLUE TSVs


def _write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    text = "\n".join("\t".join(row) for row in lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _mnli_row(i: int, premise: str, hypothesis: str, gold: str, dev: bool) -> list[str]:
    votes = [gold] * (5 if dev else 1)
    return [str(i), "31193", f"{i}n", "government", "( ( x ) )", "( y )", "(ROOT x)", "(ROOT y)",
            premise, hypothesis, *votes, gold]


def _write_glue_root(root: Path) -> None:
    """Tiny copies of the original GLUE distribution's files, with their real column layouts."""
    cola = [["gj04", "1", "", "Our friends won't buy this analysis."], ["gj04", "0", "*", "One more pseudo the."]]
    _write_tsv(root / "CoLA" / "train.tsv", None, cola)
    _write_tsv(root / "CoLA" / "dev.tsv", None, cola[::-1])
    sst = [["it 's a \"charming\" journey ", "1"], ["unflinchingly bleak", "0"]]
    _write_tsv(root / "SST-2" / "train.tsv", ["sentence", "label"], sst)
    _write_tsv(root / "SST-2" / "dev.tsv", ["sentence", "label"], sst[:1])
    mrpc_header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    mrpc = [["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him , Amrozi accused ."],
            ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."]]
    _write_tsv(root / "MRPC" / "train.tsv", mrpc_header, mrpc, bom=True)
    _write_tsv(root / "MRPC" / "dev.tsv", mrpc_header, mrpc, bom=True)
    qqp_header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    qqp = [["133273", "213221", "213222", "How is the life of a math student?", "Which level of math?", "0"],
           ["402555", "536040", "536041", "How do I control my horny emotions?", "How do you control it?", "1"],
           ["999", "1", "2", "a truncated row with no second question"]]
    _write_tsv(root / "QQP" / "train.tsv", qqp_header, qqp)
    _write_tsv(root / "QQP" / "dev.tsv", qqp_header, qqp[:2])
    sts_header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                  "score"]
    sts = [["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
            "An air plane is taking off.", "5.000"],
           ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man plays a flute.",
            "A man is playing a flute.", "3.800"]]
    _write_tsv(root / "STS-B" / "train.tsv", sts_header, sts)
    _write_tsv(root / "STS-B" / "dev.tsv", sts_header, sts)
    mnli_train = [_mnli_row(0, "Conceptually cream skimming has two dimensions.", "Product and geography.",
                            "neutral", dev=False),
                  _mnli_row(1, "you know during the season", "You lose the things.", "entailment", dev=False)]
    _write_tsv(root / "MNLI" / "train.tsv", MNLI_TRAIN_HEADER, mnli_train)
    _write_tsv(root / "MNLI" / "dev_matched.tsv", MNLI_DEV_HEADER,
               [_mnli_row(0, "The new rights are nice enough", "Everyone really likes them", "neutral", dev=True)])
    _write_tsv(root / "MNLI" / "dev_mismatched.tsv", MNLI_DEV_HEADER,
               [_mnli_row(0, "Your contribution helped.", "Your contribution did not help.", "contradiction",
                          dev=True),
                _mnli_row(1, "The answer is yes.", "It is yes.", "entailment", dev=True)])
    qnli = [["0", "When did the third Digimon series begin?", "Unlike the two seasons before it.", "not_entailment"],
            ["1", "Which missile batteries?", "The missile batteries were often used.", "entailment"]]
    _write_tsv(root / "QNLI" / "train.tsv", ["index", "question", "sentence", "label"], qnli)
    _write_tsv(root / "QNLI" / "dev.tsv", ["index", "question", "sentence", "label"], qnli)
    rte = [["0", "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons Found in Iraq.", "not_entailment"],
           ["1", "A place of sorrow.", "Pope is buried.", "entailment"]]
    _write_tsv(root / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], rte)
    _write_tsv(root / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], rte)


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("glue_data")
    _write_glue_root(root)
    return root


# (task, split) -> first row expected after loading, in the hub's columns and label ids.
EXPECTED_FIRST_ROWS = {
    ("cola", "train"): {"sentence": "Our friends won't buy this analysis.", "label": 1},
    ("cola", "validation"): {"sentence": "One more pseudo the.", "label": 0},
    ("sst2", "train"): {"sentence": "it 's a \"charming\" journey ", "label": 1},
    ("mrpc", "train"): {"sentence1": "Amrozi accused his brother .",
                        "sentence2": "Referring to him , Amrozi accused .", "label": 1},
    ("qqp", "train"): {"question1": "How is the life of a math student?", "question2": "Which level of math?",
                       "label": 0},
    ("stsb", "validation"): {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.",
                             "label": 5.0},
    ("mnli", "train"): {"premise": "Conceptually cream skimming has two dimensions.",
                        "hypothesis": "Product and geography.", "label": 1},
    ("mnli", "validation_matched"): {"premise": "The new rights are nice enough",
                                     "hypothesis": "Everyone really likes them", "label": 1},
    ("mnli", "validation_mismatched"): {"premise": "Your contribution helped.",
                                        "hypothesis": "Your contribution did not help.", "label": 2},
    ("qnli", "train"): {"question": "When did the third Digimon series begin?",
                        "sentence": "Unlike the two seasons before it.", "label": 1},
    ("rte", "validation"): {"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
                            "sentence2": "Weapons Found in Iraq.", "label": 1},
}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_local_tsv_layout_loads_in_hub_format(task: str, glue_root: Path) -> None:
    dd = load_glue(task, "local", data_dir=glue_root)
    spec = get_task(task)
    assert list(dd) == list(spec.splits)
    for split, ds in dd.items():
        assert ds.features == glue_features(task)
        assert ds.column_names == [*spec.text_keys, "label"]
        expected = EXPECTED_FIRST_ROWS.get((task, split))
        if expected:
            row = ds[0]
            assert row["label"] == pytest.approx(expected["label"])  # STS-B scores are float32
            assert {k: v for k, v in row.items() if k != "label"} == {k: v for k, v in expected.items()
                                                                      if k != "label"}


def test_local_tsv_row_counts_and_dropped_rows(glue_root: Path) -> None:
    assert load_glue("qqp", "local", data_dir=glue_root)["train"].num_rows == 2  # the truncated row is dropped
    mnli = load_glue("mnli", "local", data_dir=glue_root)
    assert (mnli["validation_matched"].num_rows, mnli["validation_mismatched"].num_rows) == (1, 2)
    assert mnli["validation_mismatched"]["label"][:] == [2, 0]


def test_local_data_dir_may_be_the_task_folder(glue_root: Path) -> None:
    dd = load_glue("stsb", "local", data_dir=glue_root / "STS-B")
    assert dd["train"]["label"][:] == pytest.approx([5.0, 3.8])


def test_missing_tsv_split_names_folder_and_file(tmp_path: Path) -> None:
    mnli = tmp_path / "MNLI"
    _write_tsv(mnli / "train.tsv", MNLI_TRAIN_HEADER, [_mnli_row(0, "p", "h", "neutral", dev=False)])
    _write_tsv(mnli / "dev_matched.tsv", MNLI_DEV_HEADER, [_mnli_row(0, "p", "h", "neutral", dev=True)])
    with pytest.raises(FileNotFoundError) as info:
        load_glue("mnli", "local", data_dir=tmp_path)
    assert str(mnli) in str(info.value) and "dev_mismatched.tsv" in str(info.value)
    assert "validation_mismatched" in str(info.value)


def test_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.tsv.*dev\.tsv.*train\.\{csv,json,jsonl\}"):
        load_glue("rte", "local", data_dir=tmp_path)


def test_bad_tsv_label_names_file_line_and_value(tmp_path: Path) -> None:
    rows = [["0", "a", "b", "entailment"], ["1", "c", "d", "maybe"]]
    _write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], rows)
    _write_tsv(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], rows[:1])
    with pytest.raises(ValueError, match=r"train\.tsv:3: bad rte label 'maybe'.*not_entailment"):
        load_glue("rte", "local", data_dir=tmp_path)


def test_tsv_missing_column_is_named(tmp_path: Path) -> None:
    _write_tsv(tmp_path / "SST-2" / "train.tsv", ["text", "label"], [["x", "1"]])
    _write_tsv(tmp_path / "SST-2" / "dev.tsv", ["text", "label"], [["x", "1"]])
    with pytest.raises(ValueError, match=r"lacks GLUE column\(s\) \['sentence'\]"):
        load_glue("sst2", "local", data_dir=tmp_path)


# --------------------------------------------------------------------------- local csv / json / jsonl


def test_local_split_files_with_hub_columns(tmp_path: Path) -> None:
    folder = tmp_path / "rte"
    folder.mkdir()
    with (folder / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "label", "idx"])
        writer.writerow(["A, with a comma.", "NA", "1", "0"])
        writer.writerow(["Second \"quoted\".", "null", "0", "1"])
    rows = [{"sentence1": "p", "sentence2": "h", "label": "not_entailment", "idx": 0}]
    (folder / "validation.json").write_text(json.dumps(rows))
    dd = load_glue("rte", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert dd["train"].column_names == ["sentence1", "sentence2", "label"]
    assert dd["train"][0] == {"sentence1": "A, with a comma.", "sentence2": "NA", "label": 1}
    assert dd["train"][1]["sentence2"] == "null"
    assert dd["validation"][0] == {"sentence1": "p", "sentence2": "h", "label": 1}
    assert dd["validation"].features == glue_features("rte")


def test_local_jsonl_for_mnli_and_stsb(tmp_path: Path) -> None:
    def jsonl(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    for split in GLUE_TASKS["mnli"].splits:
        jsonl(tmp_path / f"{split}.jsonl", [{"premise": split, "hypothesis": "h", "label": 2}])
    dd = load_glue("mnli", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert dd["validation_mismatched"][0] == {"premise": "validation_mismatched", "hypothesis": "h", "label": 2}

    stsb = tmp_path / "stsb"
    stsb.mkdir()
    for split in ("train", "validation"):
        jsonl(stsb / f"{split}.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 3.25}])
    dd = load_glue("stsb", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert dd["train"].features["label"] == datasets.Value("float32")
    assert dd["train"][0]["label"] == 3.25


def test_missing_split_file_names_folder_and_expected_names(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("sentence,label\nfine,1\n")
    with pytest.raises(FileNotFoundError) as info:
        load_glue("sst2", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path) in message and "'validation'" in message and "validation.csv" in message


def test_split_file_missing_column_and_bad_label(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\nfine,1\n")
    (tmp_path / "validation.csv").write_text("sentence,label\nfine,1\n")
    with pytest.raises(ValueError, match=r"train\.csv: lacks GLUE sst2 column\(s\) \['sentence'\]"):
        load_glue("sst2", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "train.csv").write_text("sentence,label\nfine,7\n")
    with pytest.raises(ValueError, match=r"label\(s\) \[7\] outside 0\.\.1"):
        load_glue("sst2", "local", data_dir=tmp_path, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- hub (no network: load_dataset is faked)


def test_hub_source_calls_nyu_mll_glue_and_keeps_train_and_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    label = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": label, "idx": datasets.Value("int32")})

    def split(label_id: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [label_id], "idx": [0]},
                                          features=features)

    def fake_load_dataset(path: str, name: str, **kwargs) -> datasets.DatasetDict:
        calls.append((path, name, kwargs))
        return datasets.DatasetDict({"train": split(0), "validation_matched": split(1),
                                     "validation_mismatched": split(2), "test_matched": split(-1),
                                     "test_mismatched": split(-1)})

    monkeypatch.setattr(glue_module.datasets, "load_dataset", fake_load_dataset)
    dd = load_glue("mnli", cache_dir="/tmp/hf-cache")
    assert calls == [("nyu-mll/glue", "mnli", {"cache_dir": "/tmp/hf-cache"})]
    assert list(dd) == ["train", "validation_matched", "validation_mismatched"]
    assert dd["validation_mismatched"][0] == {"premise": "p", "hypothesis": "h", "label": 2}
    assert dd["train"].features == glue_features("mnli")


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_synthetic_columns_and_label_space(task: str) -> None:
    spec = get_task(task)
    sizes = {split: 40 if split == "train" else 30 for split in spec.splits}
    dd = load_glue(task, "synthetic", synthetic_sizes=sizes)
    assert list(dd) == list(spec.splits)
    for split, ds in dd.items():
        assert ds.num_rows == sizes[split]
        assert ds.features == glue_features(task)
        labels = ds["label"][:]
        if spec.is_regression:
            assert all(0.0 <= y <= 5.0 for y in labels) and len(set(labels)) > 5
        else:
            assert set(labels) == set(range(spec.num_labels))  # every class occurs
        words = {w for key in spec.text_keys for text in ds[key][:] for w in text.split()}
        assert words <= set(VOCABULARY)
        if spec.is_pair:
            assert all(a != "" and b != "" for a, b in zip(ds[spec.text_keys[0]][:], ds[spec.text_keys[1]][:]))


def test_synthetic_is_deterministic_and_seeded() -> None:
    first = synthetic_glue("mrpc", {"train": 50, "validation": 20}, seed=3)
    again = synthetic_glue("mrpc", {"train": 50, "validation": 20}, seed=3)
    other = synthetic_glue("mrpc", {"train": 50, "validation": 20}, seed=4)
    assert first["train"].to_dict() == again["train"].to_dict()
    assert first["train"].to_dict() != other["train"].to_dict()
    # Splits are drawn independently: resizing train leaves validation unchanged.
    bigger = synthetic_glue("mrpc", {"train": 80, "validation": 20}, seed=3)
    assert bigger["validation"].to_dict() == first["validation"].to_dict()
    assert bigger["train"][:50] == first["train"][:50]


def test_synthetic_mnli_mismatched_differs_from_matched() -> None:
    dd = synthetic_glue("mnli", {"train": 0, "validation_matched": 50, "validation_mismatched": 50})
    matched = " ".join(dd["validation_matched"]["premise"][:])
    mismatched = " ".join(dd["validation_mismatched"]["premise"][:])
    assert "park" in matched and "park" not in mismatched and "market" in mismatched


def test_synthetic_sizes_refuse_unknown_split() -> None:
    with pytest.raises(ValueError, match=r"'validation'.*validation_matched"):
        synthetic_glue("mnli", {"validation": 5})


def test_synthetic_corpus_covers_vocabulary_deterministically() -> None:
    corpus = synthetic_corpus(200, seed=0)
    assert len(corpus) == 200 and corpus == synthetic_corpus(200, seed=0)
    assert corpus != synthetic_corpus(200, seed=1)
    assert set(" ".join(corpus).split()) == set(VOCABULARY)
    assert set(" ".join(synthetic_corpus(0)).split()) == set(VOCABULARY)  # the listing lines always come


def test_synthetic_labels_follow_the_stated_rules() -> None:
    stsb = synthetic_glue("stsb", {"train": 300, "validation": 0})["train"].to_dict()
    for a, b, score in zip(stsb["sentence1"], stsb["sentence2"], stsb["label"]):
        assert (a == b) == (score >= 4.75 - 1e-6)  # identical pairs, and only they, score ~5
    mrpc = synthetic_glue("mrpc", {"train": 300, "validation": 0})["train"].to_dict()
    for a, b, label in zip(mrpc["sentence1"], mrpc["sentence2"], mrpc["label"]):
        words_a, words_b = a.split(), b.split()
        same_core = (words_a[1], words_a[2], words_a[5]) == (words_b[1], words_b[2], words_b[5])  # S, V, O
        assert label == int(same_core and len(words_a) == len(words_b))


def _bag_of_words_score(task: str) -> float:
    """Logistic (ridge for STS-B) regression on binary bag-of-words of each text plus their overlap."""
    spec = get_task(task)
    dd = synthetic_glue(task, {split: 600 if split == "train" else 200 for split in spec.splits}, seed=0)
    train = dd["train"].to_dict()
    vectorizer = CountVectorizer(token_pattern=r"\S+", binary=True)
    vectorizer.fit([text for key in spec.text_keys for text in train[key]])

    def features(rows: dict) -> np.ndarray:
        parts = [vectorizer.transform(rows[key]) for key in spec.text_keys]
        if spec.is_pair:
            parts.append(parts[0].multiply(parts[1]))  # which words the two texts share
        return hstack(parts).tocsr()

    model = Ridge() if spec.is_regression else LogisticRegression(max_iter=2000)
    model.fit(features(train), train["label"])
    scores = []
    for split in spec.eval_splits:
        rows = dd[split].to_dict()
        predicted = model.predict(features(rows))
        scores.append(pearsonr(predicted, rows["label"])[0] if spec.is_regression
                      else float(np.mean(predicted == np.array(rows["label"]))))
    return min(scores)


# Chance: 1/3 for mnli, ~0.5 for the binary tasks, 0 correlation for stsb.
@pytest.mark.parametrize("task,threshold", [("mnli", 0.8), ("stsb", 0.8)]
                         + [(t, 0.85) for t in ("qqp", "qnli", "sst2", "cola", "mrpc", "rte")])
def test_synthetic_signal_is_learnable_by_a_linear_model(task: str, threshold: float) -> None:
    assert _bag_of_words_score(task) > threshold


# --------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def word_tokenizer():
    """A BERT-style word-level tokenizer over the synthetic vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {tok: i for i, tok in enumerate([*specials, *VOCABULARY])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


@pytest.mark.parametrize("task", ["rte", "sst2", "stsb"])
def test_tokenize_truncates_without_padding(task: str, word_tokenizer) -> None:
    from transformers import DataCollatorWithPadding

    dd = synthetic_glue(task, {"train": 16, "validation": 8})
    tokenized = tokenize_glue(dd, word_tokenizer, task, max_length=10)
    ds = tokenized["train"]
    assert "label" in ds.column_names and not set(ds.column_names) & set(get_task(task).text_keys)
    assert max(len(ids) for ids in ds["input_ids"][:]) == 10
    full = tokenize_glue(dd, word_tokenizer, task, max_length=128)["train"]
    full_lengths = [len(ids) for ids in full["input_ids"][:]]
    keys = get_task(task).text_keys
    n_words = [sum(len(dd["train"][i][k].split()) for k in keys) for i in range(dd["train"].num_rows)]
    assert full_lengths == [n + len(keys) + 1 for n in n_words]  # words + [CLS] + [SEP]s, no padding
    sep = word_tokenizer.sep_token_id
    expected_seps = 2 if get_task(task).is_pair else 1
    assert all(ids.count(sep) == expected_seps for ids in full["input_ids"][:])
    batch = DataCollatorWithPadding(word_tokenizer)([full[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, max(full_lengths[:4]))
    assert batch["labels"].dtype == (torch.float32 if task == "stsb" else torch.int64)
