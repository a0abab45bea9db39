"""Pretrained model loading, and tiny stand-in models for smoke runs.

Real runs pass hub names (``bert-base-uncased``, ``roberta-base``, ``gpt2-medium``)
to :func:`load_model` / :func:`load_tokenizer`. Smoke runs and tests have no
network, so :func:`build_tiny_model` writes a folder that looks like a hub
checkpoint (a locally trained tokenizer plus a 2-layer model briefly pre-trained
on the same text) and is read back through the very same ``from_pretrained`` calls. That
keeps the code path under test identical to the one used for the paper runs. The text is
real (:func:`pst.repro.data.bundled.pretraining_corpus`) unless a caller passes another:
a tokenizer learnt on a small synthetic vocabulary shreds real words into pieces and
unknown tokens, and a model pre-trained on it cannot read real text.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    DataCollatorForLanguageModeling,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizer,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODEL_KINDS = ("sequence-classification", "causal-lm")
TINY_ARCHS = ("bert", "roberta", "gpt2", "llama")
#: Causal language models among them (pre-trained on next-token prediction, not masked LM).
CAUSAL_ARCHS = ("gpt2", "llama")

#: Name of the file that marks a finished tiny-model folder; written last.
MARKER_FILE = "pst_tiny_model.json"
#: Bump when the tiny-model recipe changes, so stale folders are rebuilt.
TINY_RECIPE_VERSION = 4

# Sizes of the tiny models: small enough for a laptop CPU, same layer types as
# the real models so that sparsification touches the same modules.
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 128
#: Longest input in tokens. Matches the paper's GPT-2 sequence length (512)
#: and BERT's limit; RoBERTa gets 2 extra positions for its padding offset.
TINY_MAX_LENGTH = 512
ROBERTA_POSITION_OFFSET = 2
#: Language-model pre-training of the stand-ins on the corpus (masked LM for BERT and
#: RoBERTa, causal LM for GPT-2). PST fine-tunes a *pre-trained* model with its weights
#: frozen; frozen random weights (and GPT-2's frozen random tied LM head) cannot be
#: steered by rank-8 updates, so an untrained stand-in would show nothing of the method.
TINY_PRETRAIN_STEPS = 400
TINY_PRETRAIN_BATCH = 32
TINY_PRETRAIN_LENGTH = 64
TINY_PRETRAIN_LR = 2e-3
#: Vocabulary of the tiny tokenizers: on the bundled real text (about 155k words) 4,000
#: entries keep held-out words at about 1.3 pieces each (see :func:`tokenizer_quality`).
TINY_VOCAB_SIZE = 4000

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Same order as roberta-base: <s>=0, <pad>=1, </s>=2, <unk>=3, then <mask>.
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
GPT2_EOS = "<|endoftext|>"
# Same order and ids as LLaMA's SentencePiece vocabulary: <unk>=0, <s>=1, </s>=2, then 256 bytes.
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
#: Key/value heads of the tiny LLaMA: fewer than its 4 query heads (grouped-query attention, as
#: LLaMA-3, Mistral and Qwen2 use), so k and v are smaller than q.
TINY_KV_HEADS = 2

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


# --------------------------------------------------------------------------- loading


def load_model(
    name_or_path: str | Path,
    kind: str,
    *,
    num_labels: int | None = None,
    is_regression: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load a pretrained model with the head the experiment needs.

    ``sequence-classification`` adds a freshly initialised head on top of the
    checkpoint's encoder (``num_labels`` outputs; STS-B passes
    ``is_regression=True`` so the loss is MSE on one output). ``causal-lm``
    loads the LM head too (GPT-2 ties it to the embeddings).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind={kind!r} is not supported; expected one of {MODEL_KINDS}")
    name = str(name_or_path)
    if kind == "causal-lm":
        if num_labels is not None or is_regression:
            raise ValueError(
                f"num_labels={num_labels!r}, is_regression={is_regression!r} only apply to "
                "kind='sequence-classification', not 'causal-lm'"
            )
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, dtype=dtype, **_classification_kwargs(num_labels, is_regression)
        )
    _ensure_pad_token_id(model)
    logger.info("loaded %s (%s) from %s", type(model).__name__, kind, name)
    return model


def _classification_kwargs(num_labels: int | None, is_regression: bool) -> dict[str, Any]:
    """Config overrides for a classification head; regression means one output."""
    if is_regression:
        if num_labels not in (None, 1):
            raise ValueError(f"is_regression=True needs num_labels=1 (or None), got {num_labels!r}")
        return {"num_labels": 1, "problem_type": "regression"}
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        raise ValueError(
            f"num_labels={num_labels!r} is invalid for sequence classification; expected an int >= 1"
        )
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return {"num_labels": num_labels, "problem_type": problem_type}


def _ensure_pad_token_id(model: PreTrainedModel) -> None:
    """GPT-2 ships without a pad id; batching and ``generate`` need one (eos, as is usual)."""
    config = model.config
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        config.pad_token_id = config.eos_token_id
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and generation_config.pad_token_id is None:
            generation_config.pad_token_id = config.eos_token_id


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load the fast tokenizer; give GPT-2 a pad token (its eos) so batches can be padded."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer of {name_or_path!s} has neither a pad nor an eos token; cannot pad batches"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --------------------------------------------------------------------------- tiny models


def build_tiny_model(
    arch: str,
    folder: Path | str,
    corpus: list[str],
    *,
    vocab_size: int = TINY_VOCAB_SIZE,
    seed: int = 0,
    pretrain_steps: int = TINY_PRETRAIN_STEPS,
) -> Path:
    """Write a tiny random ``arch`` model and a tokenizer trained on ``corpus`` into ``folder``.

    The folder loads with :func:`load_model` / :func:`load_tokenizer` exactly as
    a hub checkpoint does. The model is pre-trained for ``pretrain_steps`` on the
    corpus (masked LM for bert/roberta, saved as ``BertForPreTraining`` with an identity
    pooler / ``RobertaForMaskedLM``, so loading for classification adds only a fresh head, as
    with the hub checkpoints; causal LM for gpt2 and llama). A folder that already holds a
    finished build with the same settings
    is reused, not rebuilt.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch={arch!r} is not supported; expected one of {TINY_ARCHS}")
    corpus = _check_corpus(corpus)
    if vocab_size < 300:
        # Byte-level BPE needs 256 byte symbols plus the special tokens.
        raise ValueError(f"vocab_size={vocab_size!r} is too small; expected >= 300")
    folder = Path(folder)
    settings = _tiny_settings(arch, corpus, vocab_size, seed) | {"pretrain_steps": pretrain_steps}
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One builder per folder: the processes of a launcher, and notebooks running side by side.
    with _one_process_at_a_time(), FileLock(folder.with_name(folder.name + ".lock")):
        if _is_complete(folder, settings):
            logger.info("reusing tiny %s model in %s", arch, folder)
            return folder
        _build(arch, folder, corpus, settings, vocab_size, seed, pretrain_steps)
    return folder


@contextlib.contextmanager
def _one_process_at_a_time():
    """Under torchrun / accelerate launch every process of a run asks for the same tiny model: the
    main process of each machine builds it while the others wait, then they reuse its build
    (two builders writing one folder at once would leave a mix)."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) <= 1:
        yield
        return
    from accelerate import PartialState  # initialises the process group the Trainer then uses

    with PartialState().local_main_process_first():
        yield


def _build(arch: str, folder: Path, corpus: list[str], settings: dict, vocab_size: int, seed: int,
           pretrain_steps: int) -> None:
    logger.info("building tiny %s model in %s (vocab %d, seed %d)", arch, folder, vocab_size, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_FILE).unlink(missing_ok=True)  # the folder is incomplete until rewritten
    tokenizer = _TOKENIZER_BUILDERS[arch](corpus, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_BUILDERS[arch](tokenizer)
        _pretrain(model, tokenizer, corpus, causal=arch in CAUSAL_ARCHS, steps=pretrain_steps)
        if arch == "bert":
            model = _with_identity_pooler(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MARKER_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _check_corpus(corpus: list[str]) -> list[str]:
    """A tokenizer trained on nothing would be useless; fail early and say why. Blank lines are dropped."""
    if isinstance(corpus, (str, bytes)):
        raise ValueError("corpus must be a list of strings, got a single string")
    corpus = list(corpus)
    bad = [text for text in corpus if not isinstance(text, str)]
    if bad:
        raise ValueError(f"corpus must hold only strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    texts = [text for text in corpus if text.strip()]
    if not texts:
        raise ValueError("corpus must hold at least one non-blank string")
    return texts


def _tiny_settings(arch: str, corpus: list[str], vocab_size: int, seed: int) -> dict[str, Any]:
    """Everything that determines the build; a folder is reused only if all of it matches."""
    corpus_hash = hashlib.sha256("\n".join(corpus).encode("utf-8")).hexdigest()
    settings = {
        "recipe_version": TINY_RECIPE_VERSION,
        "arch": arch,
        "vocab_size": vocab_size,
        "seed": seed,
        "corpus_sha256": corpus_hash,
        "hidden_size": TINY_HIDDEN,
        "num_layers": TINY_LAYERS,
        "num_heads": TINY_HEADS,
        "intermediate_size": TINY_INTERMEDIATE,
        "max_length": TINY_MAX_LENGTH,
    }
    if arch == "llama":
        settings["num_kv_heads"] = TINY_KV_HEADS
    return settings


def _is_complete(folder: Path, settings: dict[str, Any]) -> bool:
    """True when the marker (written last) matches and every file a load needs is there."""
    marker = folder / MARKER_FILE
    if not marker.is_file() or not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        return json.loads(marker.read_text()) == settings
    except json.JSONDecodeError:
        logger.warning("unreadable marker %s; rebuilding", marker)
        return False


# Tokenizers: train the `tokenizers` pipeline, then hand its vocab (and merges)
# to the transformers class, which rebuilds the same pipeline with the right
# post-processor and special-token attributes, and saves like a hub tokenizer.


def _train_wordpiece(corpus: list[str], vocab_size: int) -> BertTokenizer:
    """Lower-cased WordPiece, as bert-base-uncased, with a vocabulary learnt deterministically.

    ``tokenizers``' WordPieceTrainer is not deterministic: the ids of its
    ``##`` symbols follow Rust hash-map order, and merge ties are broken by id,
    so two runs learn different vocabularies. Its BPE trainer without a
    continuing-subword prefix is deterministic, so we learn BPE pieces on the
    same normalised, BERT-pre-tokenised words and give each piece both a
    word-initial and a ``##`` continuation entry. WordPiece's greedy
    longest-match then segments any word made of characters seen in training.
    """
    n_special = len(BERT_SPECIALS)
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=(vocab_size + n_special) // 2, special_tokens=BERT_SPECIALS, show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    pieces = sorted(backend.get_vocab().items(), key=lambda item: item[1])
    vocab = {token: index for index, token in enumerate(BERT_SPECIALS)}
    for piece, _ in pieces:
        if piece in vocab:
            continue
        for token in (piece, "##" + piece):
            vocab.setdefault(token, len(vocab))
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=TINY_MAX_LENGTH)


def _train_byte_bpe(corpus: list[str], vocab_size: int, specials: list[str]) -> tuple[dict, list]:
    """Byte-level BPE with the full byte alphabet, so no input is ever unknown."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    return backend.get_vocab(), merges


def _train_roberta_tokenizer(corpus: list[str], vocab_size: int) -> RobertaTokenizer:
    vocab, merges = _train_byte_bpe(corpus, vocab_size, ROBERTA_SPECIALS)
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=TINY_MAX_LENGTH)


def _train_gpt2_tokenizer(corpus: list[str], vocab_size: int) -> GPT2Tokenizer:
    vocab, merges = _train_byte_bpe(corpus, vocab_size, [GPT2_EOS])
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=TINY_MAX_LENGTH)


def _train_llama_tokenizer(corpus: list[str], vocab_size: int) -> LlamaTokenizer:
    """LLaMA's kind of tokenizer: SentencePiece-style BPE on words marked by a leading ``▁``, with
    the 256 byte tokens as fallback (no input is ever unknown) and ``<s>`` put before every text."""
    backend = Tokenizer(models.BPE(unk_token=LLAMA_SPECIALS[0], byte_fallback=True))
    # Trained on words (split=True) so that no merge crosses a word boundary; LlamaTokenizer then
    # applies the merges to whole texts, as SentencePiece does.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bytes_ = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(bytes_), special_tokens=LLAMA_SPECIALS,
                                  show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    vocab = {token: index for index, token in enumerate(LLAMA_SPECIALS + bytes_)}
    for piece, _ in sorted(backend.get_vocab().items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=TINY_MAX_LENGTH)


def tokenizer_quality(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> dict[str, float]:
    """How well ``tokenizer`` fits ``texts``: vocabulary size, pieces per word, share of unknown tokens.

    Words are BERT's pre-tokens (runs of letters/digits, each punctuation mark alone), so
    1.0 pieces per word means no word is split, whatever the tokenizer's own pre-tokenizer.
    """
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("texts must hold at least one non-blank string")
    words = sum(len(pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)) for text in texts)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    pieces = sum(len(row) for row in ids)
    unk = tokenizer.unk_token_id
    unknown = 0 if unk is None else sum(token == unk for row in ids for token in row)
    return {"vocab_size": len(tokenizer), "pieces_per_word": pieces / words, "unk_rate": unknown / pieces}


_TOKENIZER_BUILDERS = {
    "bert": _train_wordpiece,
    "roberta": _train_roberta_tokenizer,
    "gpt2": _train_gpt2_tokenizer,
    "llama": _train_llama_tokenizer,
}


# Models: random init from a tiny config; call under a fixed seed.


def _tiny_bert(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=TINY_INTERMEDIATE,
        max_position_embeddings=TINY_MAX_LENGTH,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForMaskedLM(config)


def _with_identity_pooler(model: BertForMaskedLM) -> BertForPreTraining:
    """The pre-trained model with a pooler, which BERT's classifier reads and PST keeps frozen.

    A hub BERT carries a pooler trained on next-sentence prediction. A masked-LM-only build
    has none, so every load would draw a fresh random one: the same base model would differ
    between loads (an adapter could not restore it) and PST would classify through a random
    frozen projection. Identity weights make the pooler tanh of the [CLS] state instead.
    """
    full = BertForPreTraining(model.config)
    missing, unexpected = full.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.startswith(("bert.pooler.", "cls.seq_relationship.")) for name in missing):
        raise RuntimeError(f"the masked-LM weights do not fit BertForPreTraining: {missing} {unexpected}")
    with torch.no_grad():
        full.bert.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        full.bert.pooler.dense.bias.zero_()
    return full


def _tiny_roberta(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=TINY_INTERMEDIATE,
        # Position ids start after the padding index, as in roberta-base (512 + 2).
        max_position_embeddings=TINY_MAX_LENGTH + ROBERTA_POSITION_OFFSET,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return RobertaForMaskedLM(config)


def _tiny_gpt2(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=TINY_MAX_LENGTH,
        n_embd=TINY_HIDDEN,
        n_layer=TINY_LAYERS,
        n_head=TINY_HEADS,
        n_inner=TINY_INTERMEDIATE,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)


def _tiny_llama(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        intermediate_size=TINY_INTERMEDIATE,
        max_position_embeddings=TINY_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,  # as the small LLaMA-style models (Qwen2.5-0.5B, Llama-3.2-1B)
    )
    return LlamaForCausalLM(config)


def _pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus: list[str], causal: bool,
              steps: int) -> None:
    """A short pre-training on the corpus (the caller fixes the random state).

    Texts are packed into full blocks (no padding is computed), the masked-LM loss is taken
    on the masked positions only (the vocabulary projection of the other 85% is wasted work),
    and the learning rate decays linearly to zero: on 2 CPU cores this gets the most out of
    a few hundred steps.
    """
    if steps <= 0:
        model.eval()
        return
    blocks = _packed_blocks(tokenizer, corpus, TINY_PRETRAIN_LENGTH)
    collate = DataCollatorForLanguageModeling(_with_pad_token(tokenizer), mlm=not causal, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TINY_PRETRAIN_LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    order = torch.randperm(len(blocks)).tolist()
    for step in range(steps):
        start = (step * TINY_PRETRAIN_BATCH) % len(order)
        rows = [{"input_ids": blocks[i]} for i in order[start : start + TINY_PRETRAIN_BATCH]] or [{"input_ids": blocks[0]}]
        batch = collate(rows)
        loss = model(**batch).loss if causal else _masked_positions_loss(model, batch)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            logger.info("tiny pre-training step %d: loss %.3f", step, loss.item())
    model.eval()


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """GPT-2 has no pad token; the collator needs one (eos; blocks are full, so none is used)."""
    if tokenizer.pad_token is not None:
        return tokenizer
    tokenizer = copy.copy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _packed_blocks(tokenizer: PreTrainedTokenizerBase, corpus: list[str], length: int) -> list[list[int]]:
    """The corpus as one token stream (texts separated as the model separates segments), cut
    into blocks of ``length`` tokens, each framed by the model's special tokens."""
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    frame = tokenizer("")["input_ids"]  # [CLS] [SEP] / <s> </s> / nothing (GPT-2)
    opening, closing = frame[:1], frame[1:]
    body = length - len(frame)
    stream: list[int] = []
    for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"]:
        stream += ids + [separator]
    starts = range(0, max(len(stream) - body, 0) + 1, body)
    return [opening + stream[i : i + body] + closing for i in starts]


def _masked_positions_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked-LM cross-entropy computed on the masked positions only."""
    labels = batch.pop("labels")
    hidden = model.base_model(**batch).last_hidden_state
    head = model.cls if hasattr(model, "cls") else model.lm_head  # BERT / RoBERTa: transform + decoder
    logits = head(hidden[labels != -100])
    return torch.nn.functional.cross_entropy(logits, labels[labels != -100])


_MODEL_BUILDERS = {"bert": _tiny_bert, "roberta": _tiny_roberta, "gpt2": _tiny_gpt2, "llama": _tiny_llama}
