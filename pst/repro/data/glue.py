"""GLUE data: one record format for every source (the task facts: :mod:`pst.repro.glue_tasks`).

Every source (the Hugging Face hub, local files, the real subsets shipped with the package,
the synthetic generator) yields a ``DatasetDict`` with the same splits (``train`` plus the
task's dev splits, or the ones asked for), the same columns (the hub's text columns and
``label``) and the same features, so the runner never needs to know where the data came from.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..glue_tasks import GLUE_TASKS, GlueTask, get_task  # noqa: F401 - the task table lives there
from .glue_records import LABEL_COLUMN, glue_features  # noqa: F401 - the record format is part of this interface
from .shipped import glue_dir
from .synthetic.glue import synthetic_glue

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
SOURCES = ("hub", "local", "bundled", "synthetic")
SPLIT_FILE_EXTENSIONS = ("csv", "json", "jsonl")


@dataclass(frozen=True)
class _TsvLayout:
    """Where the original GLUE distribution (``download_glue_data.py``) keeps each field.

    Columns are header names, or positions for CoLA, whose train/dev files have no header.
    """

    folder: str
    text_columns: tuple[str | int, ...]
    label_column: str | int
    files: tuple[tuple[str, str], ...]  # (split, file name)
    has_header: bool = True
    encoding: str = "utf-8-sig"  # MRPC's files start with a byte-order mark


_DEV = (("train", "train.tsv"), ("validation", "dev.tsv"))
_TSV_LAYOUTS: dict[str, _TsvLayout] = {
    # CoLA rows: source code, label, original author mark, sentence.
    "cola": _TsvLayout("CoLA", (3,), 1, _DEV, has_header=False),
    "sst2": _TsvLayout("SST-2", ("sentence",), "label", _DEV),
    "mrpc": _TsvLayout("MRPC", ("#1 String", "#2 String"), "Quality", _DEV),
    "qqp": _TsvLayout("QQP", ("question1", "question2"), "is_duplicate", _DEV),
    "stsb": _TsvLayout("STS-B", ("sentence1", "sentence2"), "score", _DEV),
    "mnli": _TsvLayout("MNLI", ("sentence1", "sentence2"), "gold_label",
                       (("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                        ("validation_mismatched", "dev_mismatched.tsv"))),
    "qnli": _TsvLayout("QNLI", ("question", "sentence"), "label", _DEV),
    "rte": _TsvLayout("RTE", ("sentence1", "sentence2"), "label", _DEV),
}


def load_glue(
    task: str,
    source: str = "hub",
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    synthetic_sizes: Mapping[str, int] | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Load one GLUE task as ``train`` plus its dev splits, columns = text keys + ``label``.

    ``source``: ``"hub"`` (nyu-mll/glue), ``"local"`` (``data_dir`` holding the original GLUE
    TSVs or ``<split>.csv|json|jsonl`` files with the hub's columns), ``"bundled"`` (the real
    subsets shipped with the package, :mod:`pst.repro.data.bundled`; QNLI and STS-B) or
    ``"synthetic"`` (generated in code; ``seed`` and ``synthetic_sizes`` apply only there).
    ``splits`` narrows what is loaded, e.g. ``("validation",)`` to evaluate from a folder
    that has no training file.
    """
    spec = get_task(task)
    if source not in SOURCES:
        raise ValueError(f"unknown GLUE source {source!r}; expected one of {list(SOURCES)}")
    splits = _check_splits(spec, splits)
    if data_dir is not None and source != "local":
        logger.warning("data_dir=%s is ignored for source=%r (only source='local' reads it)", data_dir, source)
    if source == "hub":
        raw = _load_hub(task, cache_dir)
    elif source in ("local", "bundled"):
        if source == "bundled":
            data_dir = glue_dir(task)
        elif data_dir is None:
            raise ValueError("source='local' needs data_dir: a folder with the GLUE TSVs or <split>.csv/json files")
        raw = _load_local(task, Path(data_dir), cache_dir, splits)
    else:
        raw = synthetic_glue(task, sizes=synthetic_sizes, seed=seed)
    return _to_record_format(task, raw, splits)


def _check_splits(spec: GlueTask, splits: Sequence[str] | None) -> tuple[str, ...]:
    """The splits to load, in the task's order; all of them by default."""
    if splits is None:
        return spec.splits
    if isinstance(splits, str):
        raise ValueError(f"splits must be a sequence of split names, got the string {splits!r}")
    unknown = [s for s in splits if s not in spec.splits]
    if unknown or not splits:
        raise ValueError(f"GLUE {spec.name} has no split(s) {unknown or list(splits)}; expected some of {list(spec.splits)}")
    return tuple(s for s in spec.splits if s in splits)


def _load_hub(task: str, cache_dir: str | Path | None) -> datasets.DatasetDict:
    """nyu-mll/glue from the hub (parquet; the old loading script is refused by datasets 5)."""
    logger.info("loading %s/%s from the Hugging Face hub", HUB_DATASET, task)
    return datasets.load_dataset(HUB_DATASET, task, cache_dir=None if cache_dir is None else str(cache_dir))


def _to_record_format(task: str, raw: datasets.DatasetDict, splits: tuple[str, ...]) -> datasets.DatasetDict:
    """Keep the wanted splits and the canonical columns, cast to the canonical features."""
    spec = get_task(task)
    features = glue_features(task)
    missing = [s for s in splits if s not in raw]
    if missing:
        raise ValueError(f"GLUE {task} data lacks split(s) {missing}; found {sorted(raw)}")
    out = {}
    for split in splits:
        ds = raw[split]
        absent = [c for c in features if c not in ds.column_names]
        if absent:
            raise ValueError(f"GLUE {task} split {split!r} lacks column(s) {absent}; found {ds.column_names}")
        ds = ds.select_columns(list(features))
        _check_label_range(spec, ds, split)
        out[split] = ds if ds.features == features else ds.cast(features)
    return datasets.DatasetDict(out)


def _check_label_range(spec: GlueTask, ds: datasets.Dataset, split: str) -> None:
    """Refuse unlabeled (-1) or out-of-range class ids, which would silently corrupt accuracy."""
    if spec.is_regression or len(ds) == 0:
        return
    bad = sorted(v for v in ds.unique(LABEL_COLUMN) if not (isinstance(v, int) and 0 <= v < spec.num_labels))
    if bad:
        raise ValueError(f"GLUE {spec.name} split {split!r} has label(s) {bad[:5]} outside 0..{spec.num_labels - 1}")


# --------------------------------------------------------------------------- local files


def _load_local(task: str, data_dir: Path, cache_dir: str | Path | None, splits: tuple[str, ...]) -> datasets.DatasetDict:
    """Read either the GLUE TSV layout or per-split csv/json files from ``data_dir``."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"GLUE data_dir {data_dir} is not a folder")
    folder = _task_folder(task, data_dir)
    layout = _TSV_LAYOUTS[task]
    if any((folder / name).exists() for _, name in layout.files):
        return _read_tsv_folder(task, folder, splits)
    if any(_split_files(folder, split) for split in get_task(task).splits):
        return _read_split_files(task, folder, cache_dir, splits)
    tsv_names = ", ".join(name for _, name in layout.files)
    split_names = ", ".join(f"{s}.{{{','.join(SPLIT_FILE_EXTENSIONS)}}}" for s in get_task(task).splits)
    raise FileNotFoundError(
        f"no GLUE {task} data in {folder}: expected the GLUE TSVs ({tsv_names}) or {split_names}")


def _task_folder(task: str, data_dir: Path) -> Path:
    """``data_dir`` may be the GLUE root (holding ``SST-2/``, ``MNLI/``...) or the task folder itself."""
    for candidate in (data_dir / _TSV_LAYOUTS[task].folder, data_dir / task):
        if candidate.is_dir():
            return candidate
    return data_dir


def _read_tsv_folder(task: str, folder: Path, splits: tuple[str, ...]) -> datasets.DatasetDict:
    layout = _TSV_LAYOUTS[task]
    out = {}
    for split, name in layout.files:
        if split not in splits:
            continue
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"GLUE {task} folder {folder} has no {name} (needed for split {split!r}); "
                f"expected files: {[n for _, n in layout.files]}{_evaluation_only_hint(task, split)}")
        out[split] = datasets.Dataset.from_dict(_read_tsv(task, path), features=glue_features(task))
    return datasets.DatasetDict(out)


def _read_tsv(task: str, path: Path) -> dict[str, list]:
    """Parse one GLUE TSV as the original GLUE loader does: no quoting, rows with a missing field dropped."""
    spec, layout = get_task(task), _TSV_LAYOUTS[task]
    columns: dict[str, list] = {key: [] for key in (*spec.text_keys, LABEL_COLUMN)}
    dropped = 0
    with path.open(encoding=layout.encoding, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader) if layout.has_header else None
        positions = _column_positions(layout, header, path)
        for line_no, row in enumerate(reader, start=2 if header else 1):
            fields = [row[i] if i < len(row) else None for i in positions]
            if any(v is None for v in fields) or fields[-1] == "":
                dropped += 1
                continue
            for key, value in zip(spec.text_keys, fields[:-1]):
                columns[key].append(value)
            columns[LABEL_COLUMN].append(_parse_label(spec, fields[-1], f"{path}:{line_no}"))
    if dropped:
        logger.warning("%s: dropped %d malformed row(s) with a missing field", path, dropped)
    return columns


def _column_positions(layout: _TsvLayout, header: list[str] | None, path: Path) -> list[int]:
    """Positions of the text columns then the label column."""
    wanted = (*layout.text_columns, layout.label_column)
    if header is None:
        return [int(c) for c in wanted]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path}: header lacks GLUE column(s) {missing}; found {header}")
    return [header.index(str(c)) for c in wanted]


def _parse_label(spec: GlueTask, raw: str, where: str) -> int | float:
    """Map a file's label (a class name, a class id, or an STS-B score) to the hub's encoding."""
    raw = str(raw).strip()
    if spec.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: bad {spec.name} score {raw!r}; expected a number") from None
    if raw in spec.label_names:
        return spec.label_names.index(raw)
    if raw.isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    raise ValueError(f"{where}: bad {spec.name} label {raw!r}; "
                     f"expected one of {list(spec.label_names)} or 0..{spec.num_labels - 1}")


def _split_files(folder: Path, split: str) -> list[Path]:
    return [folder / f"{split}.{ext}" for ext in SPLIT_FILE_EXTENSIONS if (folder / f"{split}.{ext}").is_file()]


def _evaluation_only_hint(task: str, split: str) -> str:
    if split != "train":
        return ""
    return f"; to evaluate only, pass splits={get_task(task).eval_splits!r}"


def _read_split_files(task: str, folder: Path, cache_dir: str | Path | None,
                      splits: tuple[str, ...]) -> datasets.DatasetDict:
    """Per-split csv/json/jsonl files with the hub's columns (extra columns such as ``idx`` are dropped)."""
    out = {}
    for split in splits:
        found = _split_files(folder, split)
        if not found:
            expected = [f"{split}.{ext}" for ext in SPLIT_FILE_EXTENSIONS]
            raise FileNotFoundError(
                f"GLUE {task} folder {folder} has no file for split {split!r}; expected one of {expected}"
                f"{_evaluation_only_hint(task, split)}")
        if len(found) > 1:
            raise ValueError(f"GLUE {task} folder {folder} has several files for split {split!r}: "
                             f"{[p.name for p in found]}; keep one")
        out[split] = _read_split_file(task, found[0], cache_dir)
    return datasets.DatasetDict(out)


def _read_split_file(task: str, path: Path, cache_dir: str | Path | None) -> datasets.Dataset:
    builder = "csv" if path.suffix == ".csv" else "json"
    # keep_default_na=False: a sentence reading "NA" or "null" stays text.
    kwargs = {"keep_default_na": False} if builder == "csv" else {}
    ds = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data",
                               cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    absent = [c for c in glue_features(task) if c not in ds.column_names]
    if absent:
        raise ValueError(f"{path}: lacks GLUE {task} column(s) {absent}; found {ds.column_names}")
    spec = get_task(task)
    if not spec.is_regression and ds.features[LABEL_COLUMN] == datasets.Value("string"):
        ds = ds.map(lambda row, i: {LABEL_COLUMN: _parse_label(spec, row[LABEL_COLUMN], f"{path} row {i}")},
                    with_indices=True, features=_string_label_features(ds.features))
    return ds


def _string_label_features(features: datasets.Features) -> datasets.Features:
    """Same features with an int64 label, for mapping class names to ids before the final cast."""
    out = datasets.Features(dict(features))
    out[LABEL_COLUMN] = datasets.Value("int64")
    return out


# --------------------------------------------------------------------------- tokenization


def tokenize_glue(
    dataset_dict: datasets.DatasetDict,
    tokenizer: Any,
    task: str,
    max_length: int = 128,
) -> datasets.DatasetDict:
    """Tokenize text (pairs as pairs), truncating to ``max_length`` without padding.

    Padding is left to ``transformers.DataCollatorWithPadding`` (dynamic, per batch), which
    also renames ``label`` to ``labels``; every other column is removed.
    """
    spec = get_task(task)

    def encode(batch: dict[str, Sequence]) -> dict[str, Any]:
        texts = [batch[key] for key in spec.text_keys]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    out = {}
    for split, ds in dataset_dict.items():
        drop = [c for c in ds.column_names if c != LABEL_COLUMN]
        out[split] = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {task}/{split}")
    return datasets.DatasetDict(out)
