"""NLG data: linearisation, file parsing, grouping, GPT-2 features, collator, synthetic data.

Files are written here in the real distribution formats (E2E csv, DART v1.1.1 JSON,
LoRA's WebNLG 2017 JSON); nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pst.repro.data import nlg
from pst.repro.data.nlg import (
    IGNORE_INDEX,
    LMDataCollator,
    build_lm_features,
    build_prompts,
    decode_completion,
    encode_example,
    group_references,
    linearise_e2e_mr,
    linearise_triples,
    load_nlg,
)
from pst.repro.data.synthetic.nlg import synthetic_nlg, synthetic_nlg_corpus

EOS = "<|endoftext|>"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE like GPT-2's, trained on a few sentences, eos as its only special token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [
            "name : Blue Spice | Type : coffee shop | area : city centre",
            "Blue Spice is a coffee shop in the city centre .",
            "Aarhus_Airport : cityServed : Aarhus | Aarhus is served by the airport .",
        ],
        vocab_size=400,
        min_frequency=1,
        special_tokens=[EOS],
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def _webnlg_entry(category: str, triples: list[tuple[str, str, str]], lexes: list[tuple[str, str]]) -> dict:
    """One entry body in LoRA's challenge-2017 JSON layout (fields as in its dev.json)."""
    return {
        "category": category,
        "dbpedialinks": [],
        "lexicalisations": [
            {"comment": comment, "lang": "", "lex": lex, "xml_id": f"Id{i}"} for i, (lex, comment) in enumerate(lexes, 1)
        ],
        "links": [],
        "modifiedtripleset": [{"object": o, "property": p, "subject": s} for s, p, o in triples],
        "originaltriplesets": {"originaltripleset": [[{"object": o, "property": p, "subject": s} for s, p, o in triples]]},
        "shape": "NA",
        "shape_type": "NA",
        "size": str(len(triples)),
        "xml_id": "Id1",
    }


def _write_webnlg(path: Path, bodies: list[dict]) -> None:
    path.write_text(json.dumps({"entries": [{str(i): b} for i, b in enumerate(bodies, 1)]}), encoding="utf-8")


@pytest.fixture
def webnlg_dir(tmp_path: Path) -> Path:
    airport = _webnlg_entry(
        "Airport",
        [("Aarhus_Airport", "runwayName", '"10L/28R"'), ("Aarhus_Airport", "cityServed", "Aarhus")],
        [("Aarhus Airport serves Aarhus.", "good"), ("Aarhus airport runway is 10L/28R", "toFix"), ("It serves Aarhus.", "good")],
    )
    athlete = _webnlg_entry("Athlete", [("Tom_Reyes", "club", "FC_Lyon")], [("Tom Reyes plays for FC Lyon.", "good")])
    _write_webnlg(tmp_path / "train.json", [airport])
    _write_webnlg(tmp_path / "dev.json", [airport])
    _write_webnlg(tmp_path / "test.json", [airport, athlete])
    return tmp_path


def _dart_entries() -> list[dict]:
    return [
        {
            "tripleset": [["Mars Hill College", "JOINED", "1973"], ["Mars Hill College", "LOCATION", "Mars Hill, North Carolina"]],
            "subtree_was_extended": True,
            "annotations": [
                {"source": "WikiSQL_decl_sents", "text": "A school from Mars Hill, North Carolina, joined in 1973."},
                {"source": "WikiSQL_decl_sents", "text": "Mars Hill College joined in 1973. "},
            ],
        },
        {"tripleset": [["Newberry College", "NICKNAME", "Wolves"]], "annotations": [{"source": "x", "text": "Its nickname is the wolves."}]},
    ]


@pytest.fixture
def dart_dir(tmp_path: Path) -> Path:
    for file_name in nlg.SPLIT_FILES["dart"].values():
        (tmp_path / file_name).write_text(json.dumps(_dart_entries()), encoding="utf-8")
    return tmp_path


E2E_MR = "name[Blue Spice], eatType[coffee shop], area[city centre]"


@pytest.fixture
def e2e_dir(tmp_path: Path) -> Path:
    rows = [(E2E_MR, "A coffee shop in the city centre, called Blue Spice."), (E2E_MR, "Blue Spice is a coffee shop."),
            ("name[Zizzi], eatType[pub], priceRange[£20-25]", "Zizzi is a pub.")]
    for file_name in nlg.SPLIT_FILES["e2e"].values():
        with open(tmp_path / file_name, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(["mr", "ref"])
            writer.writerows(rows)
    return tmp_path


# ----------------------------------------------------------------------------- linearisation


def test_e2e_linearisation_renames_every_key_and_keeps_order():
    mr = ("name[The Cricketers], eatType[restaurant], food[Chinese], priceRange[£20-25], "
          "customer rating[high], area[city centre], familyFriendly[no], near[All Bar One]")
    assert linearise_e2e_mr(mr) == (
        "name : The Cricketers | Type : restaurant | food : Chinese | price : £20-25 | "
        "customer rating : high | area : city centre | family friendly : no | near : All Bar One"
    )


def test_e2e_linearisation_keeps_commas_inside_values():
    assert linearise_e2e_mr("name[Foo, Bar], near[Café Rouge]") == "name : Foo, Bar | near : Café Rouge"


@pytest.mark.parametrize("bad", ["", "name Blue Spice", "name[Blue Spice], eatType[pub"])
def test_e2e_malformed_mr_is_named(bad):
    with pytest.raises(ValueError, match="E2E meaning representation"):
        linearise_e2e_mr(bad)


def test_triples_dart_lowercases_property_webnlg_keeps_it():
    triples = [("Aarhus_Airport", "cityServed", '"Aarhus"'), ("Aarhus_Airport", "LOCATION", "Tirstrup")]
    assert linearise_triples(triples) == 'Aarhus_Airport : cityServed : "Aarhus" | Aarhus_Airport : LOCATION : Tirstrup'
    assert linearise_triples(triples, lowercase_property=True).endswith("Aarhus_Airport : location : Tirstrup")
    with pytest.raises(ValueError, match="expected subject, property, object"):
        linearise_triples([("a", "b")])


# ----------------------------------------------------------------------------- file formats


def test_webnlg_json_good_lexicalisations_seen_flags_and_raw_entities(webnlg_dir):
    data = load_nlg("webnlg", "local", data_dir=webnlg_dir)
    assert list(data) == ["train", "validation", "test"]
    train = data["train"].to_list()
    context = 'Aarhus_Airport : runwayName : "10L/28R" | Aarhus_Airport : cityServed : Aarhus'
    assert train == [
        {"context": context, "target": "Aarhus Airport serves Aarhus.", "category": "Airport", "seen": True},
        {"context": context, "target": "It serves Aarhus.", "category": "Airport", "seen": True},
    ]
    test = data["test"]
    assert test["seen"] == [True, True, False]
    assert group_references(test, "unseen") == (["Tom_Reyes : club : FC_Lyon"], [["Tom Reyes plays for FC Lyon."]])
    assert group_references(test, "seen") == ([context], [["Aarhus Airport serves Aarhus.", "It serves Aarhus."]])
    assert len(group_references(test, "all")[0]) == 2


def test_webnlg_json_without_entries_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'entries'"):
        nlg.webnlg_rows({"data": []})


def test_dart_json_one_row_per_annotation(dart_dir):
    data = load_nlg("dart", "local", data_dir=dart_dir)
    rows = data["validation"].to_list()
    assert rows[0] == {
        "context": "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
        "target": "A school from Mars Hill, North Carolina, joined in 1973.",
    }
    assert rows[1]["target"] == "Mars Hill College joined in 1973."
    assert rows[2] == {"context": "Newberry College : nickname : Wolves", "target": "Its nickname is the wolves."}


def test_dart_hub_layout_with_annotation_columns():
    """The hub parquet stores annotations as a dict of lists; both layouts give the same rows."""
    hub_style = [dict(e, annotations={"source": [a["source"] for a in e["annotations"]],
                                      "text": [a["text"] for a in e["annotations"]]}) for e in _dart_entries()]
    assert nlg.dart_rows(hub_style) == nlg.dart_rows(_dart_entries())


def test_e2e_csv(e2e_dir):
    test = load_nlg("e2e", "local", data_dir=e2e_dir)["test"]
    assert test["context"] == ["name : Blue Spice | Type : coffee shop | area : city centre"] * 2 + [
        "name : Zizzi | Type : pub | price : £20-25"
    ]
    assert test["target"][0] == "A coffee shop in the city centre, called Blue Spice."


def test_e2e_lora_prepared_txt_files(tmp_path):
    line = "name : Blue Spice | Type : pub||Blue Spice is a pub . \n"
    for file_name in nlg.E2E_LORA_FILES.values():
        (tmp_path / file_name).write_text(line * 2, encoding="utf-8")
    train = load_nlg("e2e", "local", data_dir=tmp_path)["train"]
    assert train.to_list() == [{"context": "name : Blue Spice | Type : pub", "target": "Blue Spice is a pub ."}] * 2


def test_url_sources_base_and_mapping(webnlg_dir):
    base = webnlg_dir.as_uri()  # file:// URL read through fsspec, like an http one
    from_base = load_nlg("webnlg", "local", url=base)
    files = {split: f"{base}/{name}" for split, name in nlg.SPLIT_FILES["webnlg"].items()}
    from_mapping = load_nlg("webnlg", "local", url=files)
    assert from_base["test"].to_list() == from_mapping["test"].to_list()
    assert len(from_base["test"]) == 3


def test_hub_conversion_without_network(monkeypatch):
    """load_dataset is replaced by the hub's column layout; the real call is never made."""
    calls = []

    def fake_load_dataset(path, revision=None, **kwargs):
        calls.append((path, revision))
        split = datasets.Dataset.from_dict(
            {"meaning_representation": [E2E_MR, E2E_MR], "human_reference": ["Ref one.", "Ref two."]}
        )
        return datasets.DatasetDict({s: split for s in ("train", "validation", "test")})

    monkeypatch.setattr(nlg.datasets, "load_dataset", fake_load_dataset)
    data = load_nlg("e2e", "hub")
    assert calls == [("tuetschek/e2e_nlg", "refs/convert/parquet")]
    assert group_references(data["test"]) == (
        ["name : Blue Spice | Type : coffee shop | area : city centre"], [["Ref one.", "Ref two."]]
    )


# ----------------------------------------------------------------------------- grouping


def test_group_references_first_appearance_and_varying_counts():
    split = datasets.Dataset.from_dict(
        {"context": ["b", "a", "b", "c", "b", "a"], "target": ["b1", "a1", "b2", "c1", "b3", "a2"]}
    )
    contexts, references = group_references(split)
    assert contexts == ["b", "a", "c"]
    assert references == [["b1", "b2", "b3"], ["a1", "a2"], ["c1"]]


def test_group_references_seen_subset_needs_webnlg():
    split = datasets.Dataset.from_dict({"context": ["a"], "target": ["t"]})
    with pytest.raises(ValueError, match="'seen' column"):
        group_references(split, "seen")
    with pytest.raises(ValueError, match="unknown subset 'both'"):
        group_references(split, "both")


# ----------------------------------------------------------------------------- GPT-2 features


def test_labels_mask_context_and_separator_only(tokenizer):
    context, target = "name : Blue Spice | Type : coffee shop", "Blue Spice is a coffee shop ."
    features = build_lm_features(datasets.Dataset.from_dict({"context": [context], "target": [target]}), tokenizer)
    assert features.column_names == ["input_ids", "attention_mask", "labels"]
    ids, labels = features[0]["input_ids"], features[0]["labels"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    assert ids[n_context] == eos  # the separator
    assert labels[: n_context + 1] == [IGNORE_INDEX] * (n_context + 1)
    assert labels[n_context + 1 :] == ids[n_context + 1 :]
    assert labels[-1] == eos and IGNORE_INDEX not in labels[n_context + 1 :]
    assert tokenizer.decode(ids[n_context + 1 :]) == f" {target}{EOS}"
    assert features[0]["attention_mask"] == [1] * len(ids)


def test_prompt_is_the_training_prefix(tokenizer):
    context = "name : Blue Spice | Type : pub"
    example = encode_example(context, "Blue Spice is a pub .", tokenizer)
    prompt = build_prompts([context], tokenizer)[0]["input_ids"]
    assert example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][len(prompt)] != IGNORE_INDEX and example["labels"][len(prompt) - 1] == IGNORE_INDEX
    assert len(build_prompts([context], tokenizer, max_prompt_length=4)[0]["input_ids"]) == 4


def test_truncation_keeps_the_target(tokenizer):
    context = " ".join(["Blue Spice"] * 40)
    target = "Blue Spice is a pub ."
    full = encode_example(context, target, tokenizer, max_length=1000)
    short = encode_example(context, target, tokenizer, max_length=20)
    assert len(short["input_ids"]) == 20
    kept = [t for t in short["labels"] if t != IGNORE_INDEX]
    assert kept == [t for t in full["labels"] if t != IGNORE_INDEX]  # whole target and eos
    assert short["input_ids"][-len(kept) - 2 :] == full["input_ids"][-len(kept) - 2 :]  # context end kept


@settings(max_examples=40, deadline=None)
@given(context=st.text(alphabet="ab :|", max_size=60), target=st.text(alphabet="ab .", max_size=60),
       max_length=st.integers(min_value=2, max_value=40))
def test_features_fit_and_always_train_on_something(tokenizer, context, target, max_length):
    example = encode_example(context, target, tokenizer, max_length=max_length)
    assert len(example["input_ids"]) == len(example["labels"]) <= max_length
    assert any(label != IGNORE_INDEX for label in example["labels"])
    first_label = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert example["input_ids"][first_label - 1] == tokenizer.eos_token_id


def test_decode_completion_stops_at_eos(tokenizer):
    ids = tokenizer(" Blue Spice .", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert decode_completion(ids + [eos] + ids, tokenizer) == "Blue Spice ."


# ----------------------------------------------------------------------------- collator


def test_collator_pads_right_with_eos_fallback(tokenizer):
    assert tokenizer.pad_token_id is None
    batch = LMDataCollator(tokenizer)([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ])
    eos = tokenizer.eos_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["input_ids"].dtype == torch.long


def test_collator_left_pads_prompts_with_pad_token(tokenizer):
    class WithPad:
        pad_token_id, eos_token_id = 99, tokenizer.eos_token_id

    prompts = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    batch = LMDataCollator(WithPad(), padding_side="left", pad_to_multiple_of=4)(prompts)
    assert batch["input_ids"].tolist() == [[99, 1, 2, 3], [99, 99, 99, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert "labels" not in batch
    with pytest.raises(ValueError, match="padding_side"):
        LMDataCollator(tokenizer, padding_side="middle")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seeded():
    sizes = {"train": 20, "validation": 5, "test": 6}
    for name in nlg.DATASET_NAMES:
        first, again = synthetic_nlg(name, sizes, seed=3), synthetic_nlg(name, sizes, seed=3)
        assert all(first[s].to_list() == again[s].to_list() for s in nlg.SPLITS)
        assert first["train"].to_list() != synthetic_nlg(name, sizes, seed=4)["train"].to_list()
        assert [len(group_references(first[s])[0]) for s in nlg.SPLITS] == [20, 5, 6]


def test_synthetic_has_several_references_and_disjoint_splits():
    data = synthetic_nlg("e2e", {"train": 30, "validation": 10, "test": 10})
    counts = {len(refs) for refs in group_references(data["test"])[1]}
    assert counts <= {2, 3} and min(counts) >= 2
    contexts = [set(data[s]["context"]) for s in nlg.SPLITS]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    assert all(c.startswith("name : ") and " | Type : " in c for c in contexts[0])


def test_synthetic_webnlg_unseen_only_in_test():
    data = synthetic_nlg("webnlg", {"train": 30, "validation": 10, "test": 30})
    assert all(data["train"]["seen"]) and all(data["validation"]["seen"])
    assert 0 < sum(data["test"]["seen"]) < len(data["test"])
    assert load_nlg("webnlg", "synthetic", synthetic_sizes={"train": 30, "validation": 10, "test": 30}, seed=0)[
        "test"
    ].to_list() == data["test"].to_list()


def test_synthetic_corpus_covers_the_data():
    corpus = synthetic_nlg_corpus(0)
    assert corpus == synthetic_nlg_corpus(0) and len(corpus) == len(set(corpus))
    assert set(synthetic_nlg("dart")["train"]["target"]) <= set(corpus)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_bad_value(tmp_path, e2e_dir):
    with pytest.raises(ValueError, match="unknown NLG dataset 'wikibio'; accepted: e2e, dart, webnlg"):
        load_nlg("wikibio")
    with pytest.raises(ValueError, match="unknown NLG data source 'web'"):
        load_nlg("e2e", "web")
    with pytest.raises(ValueError, match="no script-free copy"):
        load_nlg("webnlg", "hub")
    with pytest.raises(ValueError, match="exactly one of data_dir"):
        load_nlg("dart", "local")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_nlg("dart", "local", data_dir=tmp_path / "nowhere")
    (e2e_dir / "devset.csv").unlink()
    with pytest.raises(FileNotFoundError, match=f"{e2e_dir}.*'devset.csv'"):
        load_nlg("e2e", "local", data_dir=e2e_dir)
    with pytest.raises(ValueError, match="missing splits \\['test'\\]"):
        load_nlg("dart", "local", url={"train": "a", "validation": "b"})
    with pytest.raises(ValueError, match="unknown splits \\['dev'\\]"):
        synthetic_nlg("e2e", {"dev": 3})
