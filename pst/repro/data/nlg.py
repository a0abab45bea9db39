"""Table-to-text data for the GPT-2 experiments: E2E, DART and WebNLG 2017.

Every dataset comes out in one record format, so the runner, the metrics and the
notebooks never branch on the dataset:

* a ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test`` (or the ones
  asked for: evaluation alone needs no training file);
* one row per (input, reference) pair: ``{"context": str, "target": str}``;
  WebNLG rows also carry ``category`` (str) and ``seen`` (bool, the category is one
  of the ten seen in training) so test scores can be split into seen/unseen/all;
* :func:`group_references` turns a split back into one input per entry with all its
  references, which is what the multi-reference metrics need.

The record format and the linearisation of each dataset (after LoRA's data preparation) are
in :mod:`pst.repro.data.nlg_records`, shared with the synthetic generator.

GPT-2 training sequences also follow LoRA (``gpt2_encode.py`` and ``FT_Dataset``):
``context tokens + [eos] + tokens(" " + target) + [eos]``. The first eos separates
input and output (GPT-2 has one special token, used as both bos and eos), the loss
covers only the completion and its closing eos, and generation starts from
``context tokens + [eos]``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from .nlg_records import (  # noqa: F401 - the record format is part of this module's interface
    DATASET_NAMES,
    E2E_KEY_NAMES,
    SPLITS,
    WEBNLG_SEEN_CATEGORIES,
    Row,
    check_choice,
    dart_rows,
    e2e_lora_rows,
    e2e_rows,
    linearise_e2e_mr,
    linearise_triples,
    parse_e2e_mr,
    rows_to_dataset,
    webnlg_rows,
)
from .shipped import nlg_dir
from .synthetic.nlg import synthetic_nlg

logger = logging.getLogger(__name__)

SOURCES = ("hub", "local", "bundled", "synthetic")
SUBSETS = ("all", "seen", "unseen")
IGNORE_INDEX = -100

HUB_REVISION = "refs/convert/parquet"
"""Hub branch with the script-free parquet conversion (datasets 5.x refuses loading scripts)."""

E2E_HUB_ID = "tuetschek/e2e_nlg"
"""The original E2E data (not GEM's cleaned version); parquet of ``trainset.csv``,
``devset.csv`` and ``testset_w_refs.csv`` with columns ``meaning_representation`` and
``human_reference``."""

DART_HUB_ID = "Yale-LILY/dart"
"""The hub copy was built by a script that downloaded ``data/v1.1.1/dart-v1.1.1-full-*.json``
from github.com/Yale-LILY/dart, so its parquet conversion is v1.1.1; the entry counts
below (dev 2768 also equals LoRA's copy of the v1.1.1 dev file) are checked at load."""

DART_V111_ENTRIES = {"train": 30526, "validation": 2768, "test": 6959}

LORA_WEBNLG_URL = (
    "https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data/webnlg_challenge_2017/"
)
"""Where LoRA distributes the WebNLG 2017 challenge JSON; pass it as ``url`` to
:func:`load_nlg` (``source="local"``) to read the files without a local copy."""

SPLIT_FILES: dict[str, dict[str, str]] = {
    "e2e": {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"},
    "dart": {
        "train": "dart-v1.1.1-full-train.json",
        "validation": "dart-v1.1.1-full-dev.json",
        "test": "dart-v1.1.1-full-test.json",
    },
    "webnlg": {"train": "train.json", "validation": "dev.json", "test": "test.json"},
}
"""File names of each split in a local folder (or under a base URL), as distributed."""

E2E_LORA_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
"""LoRA's prepared E2E files (``context||reference`` per line, references already
tokenised); read when a folder has them instead of the original csv files."""


# --------------------------------------------------------------------------- loading


def load_nlg(
    name: str,
    source: str = "hub",
    *,
    data_dir: str | Path | None = None,
    url: str | Mapping[str, str] | None = None,
    revision: str = HUB_REVISION,
    seed: int = 0,
    synthetic_sizes: Mapping[str, int] | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Load E2E, DART or WebNLG into the common record format.

    ``source="hub"``: E2E and DART from the Hugging Face hub at ``revision``
    (WebNLG has no script-free hub copy; use ``source="local"`` with ``data_dir`` or
    ``url=LORA_WEBNLG_URL``). ``source="local"``: the distribution files
    (:data:`SPLIT_FILES`) from the folder ``data_dir``, or from ``url``: a base URL
    the file names are appended to, or a mapping split -> file URL.
    ``source="bundled"``: the real subsets shipped with the package (E2E, DART;
    :mod:`pst.repro.data.bundled`), read as ``"local"`` files.
    ``source="synthetic"``: generated data (:func:`pst.repro.data.synthetic.nlg.synthetic_nlg`).
    ``splits`` narrows what is loaded, e.g. ``("test",)`` to evaluate from a folder without
    a training file.
    """
    check_choice(name, DATASET_NAMES, "NLG dataset")
    check_choice(source, SOURCES, "NLG data source")
    splits = _check_splits(splits)
    if source == "synthetic":
        dataset = synthetic_nlg(name, synthetic_sizes, seed=seed)
    elif source == "hub":
        dataset = _load_from_hub(name, revision)
    else:
        if source == "bundled":
            data_dir, url = nlg_dir(name), None
        dataset = _load_from_files(name, _split_locations(name, data_dir, url, splits))
    dataset = datasets.DatasetDict({split: dataset[split] for split in splits})
    for split in splits:
        logger.info("%s/%s (%s): %d rows", name, split, source, len(dataset[split]))
    return dataset


def _check_splits(splits: Sequence[str] | None) -> tuple[str, ...]:
    """The splits to load, in the canonical order; all three by default."""
    if splits is None:
        return SPLITS
    if isinstance(splits, str):
        raise ValueError(f"splits must be a sequence of split names, got the string {splits!r}")
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"unknown NLG split(s) {unknown or list(splits)!r}; accepted: {', '.join(SPLITS)}")
    return tuple(split for split in SPLITS if split in splits)


def _load_from_hub(name: str, revision: str) -> datasets.DatasetDict:
    """E2E or DART from the hub's parquet branch, converted to the record format."""
    if name == "webnlg":
        raise ValueError(
            "WebNLG 2017 has no script-free copy on the Hugging Face hub; use source='local' with "
            f"data_dir=<folder with {', '.join(SPLIT_FILES['webnlg'].values())}> or url={LORA_WEBNLG_URL!r}"
        )
    hub_id = E2E_HUB_ID if name == "e2e" else DART_HUB_ID
    logger.info("loading %s from the hub at revision %s", hub_id, revision)
    raw = datasets.load_dataset(hub_id, revision=revision)
    _check_splits_present(raw, hub_id)
    if name == "e2e":
        return datasets.DatasetDict(
            {
                split: rows_to_dataset(name, e2e_rows(raw[split]["meaning_representation"], raw[split]["human_reference"]))
                for split in SPLITS
            }
        )
    _warn_if_not_dart_v111(raw)
    return datasets.DatasetDict({split: rows_to_dataset(name, dart_rows(raw[split].to_list())) for split in SPLITS})


def _check_splits_present(raw: datasets.DatasetDict, hub_id: str) -> None:
    missing = [split for split in SPLITS if split not in raw]
    if missing:
        raise ValueError(f"{hub_id} has splits {sorted(raw)!r}; missing {missing!r}")


def _warn_if_not_dart_v111(raw: datasets.DatasetDict) -> None:
    """The hub copy carries no version field; entry counts are the check we have."""
    counts = {split: len(raw[split]) for split in SPLITS}
    if counts != DART_V111_ENTRIES:
        logger.warning("DART entry counts %s differ from v1.1.1's %s", counts, DART_V111_ENTRIES)


def _split_locations(
    name: str, data_dir: str | Path | None, url: str | Mapping[str, str] | None, splits: Sequence[str] = SPLITS
) -> dict[str, str]:
    """Where each wanted split's file is: a local path or a URL."""
    if (data_dir is None) == (url is None):
        raise ValueError(
            f"source='local' needs exactly one of data_dir (a folder) or url (a base URL or "
            f"split -> URL mapping); got data_dir={data_dir!r}, url={url!r}"
        )
    if url is not None:
        return _url_locations(name, url, splits)
    return _folder_locations(name, Path(data_dir), splits)


def _url_locations(name: str, url: str | Mapping[str, str], splits: Sequence[str]) -> dict[str, str]:
    if isinstance(url, Mapping):
        missing = [split for split in splits if split not in url]
        if missing:
            raise ValueError(f"url mapping has keys {sorted(url)!r}; missing splits {missing!r}")
        return {split: str(url[split]) for split in splits}
    base = url if url.endswith("/") else url + "/"
    return {split: base + SPLIT_FILES[name][split] for split in splits}


def _folder_locations(name: str, folder: Path, splits: Sequence[str]) -> dict[str, str]:
    """Files of the wanted splits in ``folder``; for E2E, LoRA's prepared txt files if the csv files are absent."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} data folder {str(folder)!r} does not exist or is not a folder")
    layouts = [SPLIT_FILES[name]]
    if name == "e2e":
        layouts.append(E2E_LORA_FILES)
    for layout in layouts:
        if all((folder / layout[split]).is_file() for split in splits):
            return {split: str(folder / layout[split]) for split in splits}
    expected = SPLIT_FILES[name]
    missing_split = next(split for split in splits if not (folder / expected[split]).is_file())
    alternative = f" (or LoRA's {', '.join(E2E_LORA_FILES[s] for s in splits)})" if name == "e2e" else ""
    hint = "; to evaluate only, pass splits=('test',) or ('validation',)" if missing_split == "train" else ""
    raise FileNotFoundError(
        f"{name} data folder {str(folder)!r} has no file {expected[missing_split]!r} (split {missing_split!r}); "
        f"expected {', '.join(expected[s] for s in splits)}{alternative}{hint}"
    )


def _read_text(location: str) -> str:
    """Text of a local file or URL (fsspec reads both)."""
    import fsspec

    try:
        with fsspec.open(location, "r", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"cannot read split file {location!r}: {error}") from error


def _parse_split_file(name: str, location: str) -> list[Row]:
    """Rows of one split file, by dataset and file type."""
    text = _read_text(location)
    if name == "e2e" and location.endswith(".txt"):
        return e2e_lora_rows(text.splitlines())
    if name == "e2e":
        records = list(csv.DictReader(io.StringIO(text)))
        if records and not {"mr", "ref"} <= records[0].keys():
            raise ValueError(f"E2E csv {location!r} has columns {sorted(records[0])!r}; expected 'mr' and 'ref'")
        return e2e_rows([r["mr"] for r in records], [r["ref"] for r in records])
    document = json.loads(text)
    if name == "dart":
        if not isinstance(document, list):
            raise ValueError(f"DART file {location!r} holds a {type(document).__name__}; expected a JSON list of entries")
        return dart_rows(document)
    return webnlg_rows(document)


def _load_from_files(name: str, locations: Mapping[str, str]) -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {split: rows_to_dataset(name, _parse_split_file(name, location)) for split, location in locations.items()}
    )


# --------------------------------------------------------------------------- evaluation view


def group_references(split: datasets.Dataset, subset: str = "all") -> tuple[list[str], list[list[str]]]:
    """All references of each distinct context, in order of first appearance.

    Grouping by the context string is what LoRA's ``gpt2_decode.py`` does.
    ``subset`` ("all", "seen", "unseen") filters WebNLG by the ``seen`` column.
    """
    check_choice(subset, SUBSETS, "subset")
    if subset != "all" and "seen" not in split.column_names:
        raise ValueError(f"subset={subset!r} needs a 'seen' column (WebNLG); this split has {split.column_names!r}")
    keep_seen = {"all": None, "seen": True, "unseen": False}[subset]
    seen_flags = list(split["seen"]) if keep_seen is not None else [None] * len(split)
    grouped: dict[str, list[str]] = {}
    for context, target, seen in zip(split["context"], split["target"], seen_flags):
        if keep_seen is None or seen == keep_seen:
            grouped.setdefault(context, []).append(target)
    return list(grouped), list(grouped.values())


# --------------------------------------------------------------------------- GPT-2 features


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos token; the NLG format needs one as separator and end")
    return int(tokenizer.eos_token_id)


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _fit(context: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Shorten (context, completion) so context + [sep] + completion fits ``max_length``.

    The completion is kept whole while at least one context token still fits; the
    context then loses its *start* (its end sits next to the separator, as in LoRA's
    query truncation). A completion too long even so keeps its start, next to at most
    half of the remaining length of context.
    """
    if len(context) + 1 + len(completion) <= max_length:
        return context, completion
    if len(completion) + 2 <= max_length and context:
        return context[len(context) - (max_length - 1 - len(completion)) :], completion
    kept = min(len(context), (max_length - 1) // 2)
    kept_context = context[len(context) - kept :] if kept else []
    return kept_context, completion[: max_length - 1 - kept]


def encode_example(context: str, target: str, tokenizer: Any, max_length: int = 512) -> dict[str, list[int]]:
    """One training sequence: context, eos, `` target``, eos; loss only after the separator."""
    eos = _eos_id(tokenizer)
    context_ids, completion_ids = _token_ids(tokenizer, [context, " " + target])
    return _assemble(context_ids, completion_ids + [eos], eos, max_length)


def _assemble(context_ids: list[int], completion_ids: list[int], eos: int, max_length: int) -> dict[str, list[int]]:
    if max_length < 2:
        raise ValueError(f"max_length={max_length} is too small; need at least 2 (separator and one target token)")
    context_ids, completion_ids = _fit(context_ids, completion_ids, max_length)
    input_ids = context_ids + [eos] + completion_ids
    labels = [IGNORE_INDEX] * (len(context_ids) + 1) + completion_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def build_lm_features(dataset: datasets.Dataset, tokenizer: Any, max_length: int = 512) -> datasets.Dataset:
    """Tokenise a split for causal-LM training: ``input_ids``, ``attention_mask``, ``labels``.

    Context and separator positions have label -100, so the loss is on `` target`` and
    its closing eos only (LoRA's mask). Rows are unpadded; :class:`LMDataCollator` pads.
    """
    eos = _eos_id(tokenizer)

    def encode_batch(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        contexts = _token_ids(tokenizer, list(batch["context"]))
        completions = _token_ids(tokenizer, [" " + target for target in batch["target"]])
        encoded = [_assemble(c, t + [eos], eos, max_length) for c, t in zip(contexts, completions)]
        return {key: [example[key] for example in encoded] for key in ("input_ids", "attention_mask", "labels")}

    return dataset.map(encode_batch, batched=True, remove_columns=dataset.column_names, desc="tokenising NLG")


def build_prompts(
    contexts: Sequence[str], tokenizer: Any, max_prompt_length: int | None = None
) -> list[dict[str, list[int]]]:
    """Generation inputs: context tokens + eos, the prefix the model saw in training.

    ``max_prompt_length`` keeps the context's last tokens (LoRA keeps
    ``max_seq_length - max_eval_length``). Batch them with ``LMDataCollator(tokenizer,
    padding_side="left")``.
    """
    eos = _eos_id(tokenizer)
    prompts = []
    for context_ids in _token_ids(tokenizer, list(contexts)):
        if max_prompt_length is not None:
            if max_prompt_length < 1:
                raise ValueError(f"max_prompt_length={max_prompt_length}; expected at least 1")
            context_ids = context_ids[max(0, len(context_ids) - (max_prompt_length - 1)) :]
        ids = context_ids + [eos]
        prompts.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return prompts


def decode_completion(token_ids: Sequence[int], tokenizer: Any) -> str:
    """Generated tokens (after the prompt) -> text up to the first eos, as LoRA's decoder cleans it."""
    eos = _eos_id(tokenizer)
    ids = list(token_ids)
    if eos in ids:
        ids = ids[: ids.index(eos)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.split("\n\n")[0].strip()


@dataclass
class LMDataCollator:
    """Pads a list of encoded examples into tensors.

    ``input_ids`` with the pad token (eos when the tokenizer has none, as GPT-2),
    ``labels`` with -100, ``attention_mask`` with 0. ``padding_side="left"`` is for
    batched generation, where every prompt must end at the last position.
    """

    tokenizer: Any
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.padding_side, ("right", "left"), "padding_side")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of}; expected a positive int or None")

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else _eos_id(self.tokenizer)

    def _target_length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        return longest if multiple is None else -(-longest // multiple) * multiple

    def _pad(self, sequence: list[int], length: int, value: int) -> list[int]:
        padding = [value] * (length - len(sequence))
        return padding + sequence if self.padding_side == "left" else sequence + padding

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("LMDataCollator got an empty batch")
        length = self._target_length(max(len(f["input_ids"]) for f in features))
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        has_labels = "labels" in features[0]
        if has_labels:
            batch["labels"] = []
        for feature in features:
            ids = list(feature["input_ids"])
            mask = list(feature.get("attention_mask", [1] * len(ids)))
            batch["input_ids"].append(self._pad(ids, length, self.pad_token_id))
            batch["attention_mask"].append(self._pad(mask, length, 0))
            if has_labels:
                batch["labels"].append(self._pad(list(feature["labels"]), length, IGNORE_INDEX))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
