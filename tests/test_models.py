"""Tiny local models load back through the hub code path and behave like the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pst.repro.models import (
    MARKER_FILE,
    build_tiny_model,
    load_model,
    load_tokenizer,
)

CORPUS = [
    "The cat sat on the mat.",
    "A dog barked loudly at the mailman!",
    "Is this sentence entailed by that one?",
    "Numbers like 42 and 2022 also appear in text.",
    "the restaurant serves cheap english food near the river",
] * 10


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build each arch once per module; the builds are the expensive part."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch, CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
            for arch in ("bert", "roberta", "gpt2", "llama")}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
def test_folder_holds_a_hub_like_checkpoint(tiny_folders: dict[str, Path], arch: str) -> None:
    folder = tiny_folders[arch]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_FILE):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch
    expected_arch = {"bert": "BertForPreTraining", "roberta": "RobertaForMaskedLM", "gpt2": "GPT2LMHeadModel",
                     "llama": "LlamaForCausalLM"}[arch]
    assert config["architectures"] == [expected_arch]


def test_bert_pair_has_cls_sep_structure_and_lowercases(tiny_folders: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(tiny_folders["bert"])
    encoded = tokenizer("The CAT sat.", "A dog!")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]"
    assert tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert "cat" in tokens and "CAT" not in tokens
    first_sep = tokens.index("[SEP]")
    assert set(encoded["token_type_ids"][: first_sep + 1]) == {0}
    assert set(encoded["token_type_ids"][first_sep + 1:]) == {1}


def test_roberta_pair_has_s_double_sep_structure(tiny_folders: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(tiny_folders["roberta"])
    encoded = tokenizer("The cat sat.", "A dog!")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert tokens.count("</s>") == 3  # <s> A </s></s> B </s>
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 1


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("num_labels", [2, 3])
def test_classification_forward_shape(tiny_folders: dict[str, Path], arch: str, num_labels: int) -> None:
    folder = tiny_folders[arch]
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, "sequence-classification", num_labels=num_labels)
    assert next(model.parameters()).dtype == torch.float32
    batch = tokenizer(["The cat sat.", "hi"], ["A dog!", "there it is"], padding=True, return_tensors="pt")
    labels = torch.tensor([0, num_labels - 1])
    output = model(**batch, labels=labels)
    assert output.logits.shape == (2, num_labels)
    assert model.config.problem_type == "single_label_classification"
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_regression_head_has_one_output_and_mse_loss(tiny_folders: dict[str, Path], arch: str) -> None:
    folder = tiny_folders[arch]
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, "sequence-classification", num_labels=1, is_regression=True)
    batch = tokenizer(["a cat", "a dog"], ["the cat", "the mat"], padding=True, return_tensors="pt")
    labels = torch.tensor([0.5, 4.0])
    output = model(**batch, labels=labels)
    assert output.logits.shape == (2, 1)
    assert model.config.problem_type == "regression"
    expected = torch.nn.functional.mse_loss(output.logits.squeeze(-1), labels)
    torch.testing.assert_close(output.loss, expected)


def test_encoder_weights_come_from_the_checkpoint(tiny_folders: dict[str, Path]) -> None:
    """The head is fresh but the encoder is the saved one, as with a real checkpoint."""
    folder = tiny_folders["bert"]
    saved = _weights(folder)
    model = load_model(folder, "sequence-classification", num_labels=2)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(model.state_dict()[key], saved[key])


def test_only_the_classifier_is_fresh_when_bert_loads_for_classification(tiny_folders: dict[str, Path]) -> None:
    """A hub BERT carries its pooler; so does the tiny one (tanh of [CLS]), or every load would draw another."""
    first, second = (load_model(tiny_folders["bert"], "sequence-classification", num_labels=2) for _ in range(2))
    differ = sorted(k for k, v in first.state_dict().items() if not torch.equal(v, second.state_dict()[k]))
    assert differ == ["classifier.bias", "classifier.weight"] or differ == ["classifier.weight"]
    torch.testing.assert_close(first.bert.pooler.dense.weight, torch.eye(first.config.hidden_size))


def test_gpt2_causal_lm_and_pad_token(tiny_folders: dict[str, Path]) -> None:
    folder = tiny_folders["gpt2"]
    tokenizer = load_tokenizer(folder)
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token == tokenizer.eos_token
    model = load_model(folder, "causal-lm")
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert model.config.n_positions >= 512
    batch = tokenizer(["The cat sat on the mat.", "hi"], padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    # The LM head is tied to the input embeddings, as in the real GPT-2.
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_llama_is_a_grouped_query_causal_lm_with_llama_s_tokenizer(tiny_folders: dict[str, Path]) -> None:
    import pst

    folder = tiny_folders["llama"]
    tokenizer = load_tokenizer(folder)
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens(3) == "<0x00>"  # byte fallback, as LLaMA's vocabulary
    assert tokenizer("The cat sat.")["input_ids"][0] == tokenizer.bos_token_id  # <s> first, as LLaMA
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    model = load_model(folder, "causal-lm")
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # k, v smaller than q
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    batch = tokenizer(["The cat sat on the mat.", "hi"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    # PST's LLaMA defaults apply: q, k, v, o, gate, up, down of both blocks, not the tied head.
    assert len(list(pst.sparse_layers(pst.sparsify(model, pst.PSTConfig())))) == 2 * 7


def test_byte_level_tokenizers_round_trip_unseen_text(tiny_folders: dict[str, Path]) -> None:
    text = "Zebra café — ünïcödé!"
    for arch in ("roberta", "gpt2", "llama"):
        tokenizer = load_tokenizer(tiny_folders[arch])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text  # no byte is lost to an unknown token


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_same_seed_gives_identical_build(tmp_path: Path, tiny_folders: dict[str, Path], arch: str) -> None:
    again = build_tiny_model(arch, tmp_path / arch, CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
    first, second = _weights(tiny_folders[arch]), _weights(again)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert (again / "tokenizer.json").read_text() == (tiny_folders[arch] / "tokenizer.json").read_text()


def test_different_seed_gives_different_weights(tmp_path: Path, tiny_folders: dict[str, Path]) -> None:
    other = build_tiny_model("bert", tmp_path / "bert", CORPUS, vocab_size=400, pretrain_steps=5, seed=1)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(_weights(other)[key], _weights(tiny_folders["bert"])[key])


def test_build_does_not_touch_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("gpt2", tmp_path / "g", CORPUS, vocab_size=400, pretrain_steps=5, seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_second_call_reuses_folder(tmp_path: Path) -> None:
    folder = build_tiny_model("roberta", tmp_path / "r", CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert build_tiny_model("roberta", folder, CORPUS, vocab_size=400, pretrain_steps=5, seed=0) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps


def test_changed_settings_rebuild(tmp_path: Path) -> None:
    folder = build_tiny_model("bert", tmp_path / "b", CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
    before = _weights(folder)["bert.embeddings.word_embeddings.weight"]
    build_tiny_model("bert", folder, CORPUS, vocab_size=400, pretrain_steps=5, seed=1)
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["seed"] == 1
    assert not torch.equal(_weights(folder)["bert.embeddings.word_embeddings.weight"], before)


def test_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    folder = build_tiny_model("gpt2", tmp_path / "g", CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
    complete = _weights(folder)
    (folder / "model.safetensors").unlink()
    build_tiny_model("gpt2", folder, CORPUS, vocab_size=400, pretrain_steps=5, seed=0)
    rebuilt = _weights(folder)
    assert rebuilt.keys() == complete.keys()
    assert all(torch.equal(rebuilt[name], complete[name]) for name in complete)  # same seed, same model
    loaded = load_model(folder, "causal-lm").state_dict()
    torch.testing.assert_close(loaded["transformer.wte.weight"], complete["transformer.wte.weight"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "token-classification", "num_labels": 2}, "kind="),
        ({"kind": "sequence-classification"}, "num_labels=None"),
        ({"kind": "sequence-classification", "num_labels": 0}, "num_labels=0"),
        ({"kind": "sequence-classification", "num_labels": 3, "is_regression": True}, "num_labels=1"),
        ({"kind": "causal-lm", "num_labels": 2}, "causal-lm"),
    ],
)
def test_load_model_rejects_bad_arguments(tiny_folders: dict[str, Path], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_model(tiny_folders["bert"], **kwargs)


@pytest.mark.parametrize(
    ("arch", "corpus", "vocab_size", "match"),
    [
        ("t5", CORPUS, 400, "arch="),
        ("bert", [], 400, "non-blank"),
        ("bert", ["  ", ""], 400, "non-blank"),
        ("bert", "just one string", 400, "single string"),
        ("gpt2", CORPUS, 100, "vocab_size=100"),
    ],
)
def test_build_rejects_bad_arguments(tmp_path: Path, arch: str, corpus, vocab_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_tiny_model(arch, tmp_path / "x", corpus, vocab_size=vocab_size)


def test_build_is_identical_across_processes(tmp_path: Path, tiny_folders: dict[str, Path]) -> None:
    """Rust hash maps are seeded per process; a build in a fresh interpreter must match byte for byte."""
    import hashlib
    import subprocess
    import sys

    script = (
        "import sys, json; from pathlib import Path; from pst.repro.models import build_tiny_model\n"
        "corpus = json.loads(sys.argv[2])\n"
        "for arch in ('bert', 'roberta', 'gpt2', 'llama'):\n"
        "    build_tiny_model(arch, Path(sys.argv[1]) / arch, corpus, vocab_size=400, pretrain_steps=5, seed=0)\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(CORPUS)],
                   check=True, cwd=root, capture_output=True)
    for arch, folder in tiny_folders.items():
        for name in ("tokenizer.json", "model.safetensors"):
            digests = {hashlib.sha256((base / name).read_bytes()).hexdigest()
                       for base in (folder, tmp_path / arch)}
            assert len(digests) == 1, f"{arch}/{name} differs between processes"


# --------------------------------------------------------------------------- real text


@pytest.fixture(scope="module")
def held_out_text() -> list[str]:
    """Bundled validation/test text the tokenizers never saw (QNLI, E2E, DART references)."""
    from pst.repro.data.glue import load_glue
    from pst.repro.data.nlg import load_nlg

    validation = load_glue("qnli", "bundled", splits=("validation",))["validation"]
    texts = list(validation["question"]) + list(validation["sentence"])
    for name in ("e2e", "dart"):
        texts += list(load_nlg(name, "bundled", splits=("test",))["test"]["target"])
    return texts


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
def test_tokenizer_learnt_on_bundled_text_keeps_real_words_whole(tmp_path: Path, arch: str, held_out_text) -> None:
    from pst.repro.data.bundled import pretraining_corpus
    from pst.repro.models import TINY_VOCAB_SIZE, tokenizer_quality

    folder = build_tiny_model(arch, tmp_path / arch, pretraining_corpus(), pretrain_steps=0)
    quality = tokenizer_quality(load_tokenizer(folder), held_out_text)
    assert quality["vocab_size"] >= TINY_VOCAB_SIZE - 1
    assert quality["pieces_per_word"] < 1.5  # measured 1.43 (WordPiece), 1.38 (byte-level BPE), 1.36 (LLaMA)
    assert quality["unk_rate"] < 0.001


def test_tokenizer_learnt_on_synthetic_text_shreds_real_words(tmp_path: Path, held_out_text) -> None:
    """What the quality bounds above guard against: the old smoke tokenizer on real text."""
    from pst.repro.data.synthetic.glue import synthetic_corpus
    from pst.repro.models import tokenizer_quality

    folder = build_tiny_model("bert", tmp_path / "bert", synthetic_corpus(4000), vocab_size=1000, pretrain_steps=0)
    quality = tokenizer_quality(load_tokenizer(folder), held_out_text)
    assert quality["pieces_per_word"] > 2.5 and quality["unk_rate"] > 0.01


def test_tokenizer_quality_counts_bert_pre_tokens(tiny_folders: dict[str, Path]) -> None:
    from pst.repro.models import tokenizer_quality

    tokenizer = load_tokenizer(tiny_folders["bert"])
    words = "the cat sat ."  # four pre-tokens, each a whole-word vocabulary entry
    assert tokenizer_quality(tokenizer, [words])["pieces_per_word"] == len(tokenizer(words, add_special_tokens=False)["input_ids"]) / 4
    with pytest.raises(ValueError, match="non-blank"):
        tokenizer_quality(tokenizer, ["  "])


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
def test_pretraining_blocks_are_full_and_framed(tiny_folders: dict[str, Path], arch: str) -> None:
    from pst.repro.models import TINY_PRETRAIN_LENGTH, _packed_blocks

    tokenizer = load_tokenizer(tiny_folders[arch])
    blocks = _packed_blocks(tokenizer, CORPUS * 3, TINY_PRETRAIN_LENGTH)
    assert len(blocks) > 1 and {len(b) for b in blocks} == {TINY_PRETRAIN_LENGTH}
    # Framed as the model's inputs are: [CLS] ... [SEP], <s> ... </s>, <s> ... (LLaMA), bare (GPT-2).
    frame = {"bert": ["[CLS]", "[SEP]"], "roberta": ["<s>", "</s>"], "llama": ["<s>"], "gpt2": []}[arch]
    assert tokenizer.convert_ids_to_tokens(tokenizer("")["input_ids"]) == frame
    if frame:
        assert all(b[0] == tokenizer.convert_tokens_to_ids(frame[0]) for b in blocks)
        assert all(b[-1] == tokenizer.convert_tokens_to_ids(frame[-1]) for b in blocks) or len(frame) == 1


def test_resolve_model_keeps_one_folder_per_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pst.repro.runners import model_source

    built = []
    monkeypatch.delenv(model_source.CACHE_VARIABLE, raising=False)
    monkeypatch.setattr(model_source, "build_tiny_model", lambda arch, folder, corpus: built.append((folder, corpus)) or folder)
    model_source.resolve_model("tiny:bert", tmp_path, lambda: ["one text"])
    model_source.resolve_model("tiny:bert", tmp_path, lambda: ["another text"])
    model_source.resolve_model("tiny:bert", tmp_path)  # default: the bundled real text
    folders = [folder for folder, _ in built]
    assert len(set(folders)) == 3 and all(f.parent == tmp_path and f.name.startswith("bert-") for f in folders)
    from pst.repro.data.bundled import pretraining_corpus

    assert built[2][1] == pretraining_corpus()
    assert model_source.resolve_model("bert-base-uncased", tmp_path) == "bert-base-uncased"
    with pytest.raises(ValueError, match="tiny:t5"):
        model_source.resolve_model("tiny:t5", tmp_path)
