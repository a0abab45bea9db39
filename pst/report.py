"""Every table (Markdown, LaTeX, CSV) and figure (PNG, PDF) of the reproduction, from records only.

The report never trains and never remembers: each table is rebuilt from the JSON records
that the runners left under a results folder (:mod:`pst.results`), plus two things computed
from the code itself (Table 1's criteria and the parameter counts, on meta-device models).
Paper values come from one data file, ``pst/paper_results.json``, each with its source; a
cell with no sourced value shows "—" (the paper's numbers were not available to us).

Conventions:

* Grid search (:func:`best_runs`): per task and method the run with the best selection
  value wins: ``selected.value`` for GLUE (the task's main metric on the primary dev split,
  at the evaluation the runner selected), BLEU on the "all" subset for NLG. NaN never wins.
  Seeds are not averaged: a record with another seed is one more grid point.
* GLUE values are percentages with 1 decimal (accuracy, F1, Matthews and Pearson/Spearman
  correlation times 100). NLG values are shown in the units :mod:`pst.metrics.nlg` records:
  BLEU, METEOR, ROUGE-L and TER in percent (1 decimal; TER: lower is better), NIST and CIDEr
  raw (2 decimals).
* A cell is "—" when there is no value: no run for it, a metric not measured (METEOR without
  Java), or no sourced paper value. ``NaN`` means a run measured NaN (e.g. Pearson of constant
  predictions).
* Every table function takes a results folder *or* an iterable of already loaded records, so
  :func:`build_report` reads the folder once.
* Figures are :class:`matplotlib.figure.Figure` objects drawn with the Agg renderer (no
  pyplot, no global state, headless); the notebooks display them inline.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .methods import get_method
from .results import canonical_json, iter_records, record_path

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: A results folder, or records already read from one.
Records = Union[str, os.PathLike, Iterable[dict]]

PAPER_RESULTS_PATH = Path(__file__).with_name("paper_results.json")
MISSING = "—"
PAPER_SUFFIX = " (paper)"

#: Row order of every table, and the names the paper uses.
METHOD_ORDER = ("pst", "magnitude", "movement", "dense", "lora")
METHOD_NAMES = {"pst": "PST", "magnitude": "MaP", "movement": "MvP", "dense": "Dense fine-tuning", "lora": "LoRA"}
#: One colour and marker per method, in every figure.
METHOD_STYLE = {
    "pst": dict(color="tab:red", marker="o"),
    "magnitude": dict(color="tab:blue", marker="s"),
    "movement": dict(color="tab:green", marker="^"),
    "dense": dict(color="tab:gray", marker="D"),
    "lora": dict(color="tab:purple", marker="v"),
}

GLUE_EXPERIMENTS = {"glue-bert": "glue_bert", "glue-roberta": "glue_roberta"}
NLG_EXPERIMENT = "nlg-gpt2"
ANALYSIS_EXPERIMENT = "analysis"
ABLATION_EXPERIMENTS = {"score": "ablation-score", "rank": "ablation-rank", "sparsity": "ablation-sparsity"}
KNOWN_EXPERIMENTS = (*GLUE_EXPERIMENTS, NLG_EXPERIMENT, ANALYSIS_EXPERIMENT, *ABLATION_EXPERIMENTS.values())

TASK_NAMES = {"mnli": "MNLI", "qqp": "QQP", "qnli": "QNLI", "sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B",
              "mrpc": "MRPC", "rte": "RTE"}
GLUE_ORDER = tuple(TASK_NAMES)  # the paper's column order
METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "matthews_correlation": "MCC", "pearson": "Pearson",
                "spearmanr": "Spearman"}
SPARSITY_COLUMN = "Sparsity (%)"
AVERAGE_COLUMN = "Avg (main metrics)"
FIGURE_DPI = 150


@dataclass(frozen=True)
class _Column:
    """One numeric column: where its value lives in a record and in paper_results.json."""

    label: str
    task: str
    split: str  # GLUE dev split, or NLG subset ("all", "seen", "unseen")
    metric: str
    paper_key: str
    decimals: int = 1
    scale: float = 100.0  # record value -> shown value (GLUE fractions -> percent)


GLUE_COLUMNS: tuple[_Column, ...] = (
    _Column("MNLI-m (acc)", "mnli", "validation_matched", "accuracy", "accuracy_matched"),
    _Column("MNLI-mm (acc)", "mnli", "validation_mismatched", "accuracy", "accuracy_mismatched"),
    _Column("QQP (acc)", "qqp", "validation", "accuracy", "accuracy"),
    _Column("QQP (F1)", "qqp", "validation", "f1", "f1"),
    _Column("QNLI (acc)", "qnli", "validation", "accuracy", "accuracy"),
    _Column("SST-2 (acc)", "sst2", "validation", "accuracy", "accuracy"),
    _Column("CoLA (MCC)", "cola", "validation", "matthews_correlation", "matthews_correlation"),
    _Column("STS-B (Pearson)", "stsb", "validation", "pearson", "pearson"),
    _Column("STS-B (Spearman)", "stsb", "validation", "spearmanr", "spearmanr"),
    _Column("MRPC (acc)", "mrpc", "validation", "accuracy", "accuracy"),
    _Column("MRPC (F1)", "mrpc", "validation", "f1", "f1"),
    _Column("RTE (acc)", "rte", "validation", "accuracy", "accuracy"),
)

_NLG_DATASETS = {"e2e": "E2E", "dart": "DART", "webnlg": "WebNLG"}
_NLG_LABELS = {"ROUGE_L": "ROUGE-L"}
_E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
_WEBNLG_METRICS = ("BLEU", "METEOR", "TER")
_RAW_METRICS = {"NIST", "CIDEr"}  # not percentages: 2 decimals


def _nlg_column(task: str, subset: str, metric: str) -> _Column:
    name = f"{_NLG_DATASETS[task]} {_NLG_LABELS.get(metric, metric)}"
    if task == "webnlg":
        return _Column(f"{name} ({subset})", task, subset, metric, f"{metric}_{subset}",
                       decimals=2 if metric in _RAW_METRICS else 1, scale=1.0)
    return _Column(name, task, subset, metric, metric, decimals=2 if metric in _RAW_METRICS else 1, scale=1.0)


NLG_COLUMNS: tuple[_Column, ...] = (
    *(_nlg_column("e2e", "all", m) for m in _E2E_METRICS),
    *(_nlg_column("dart", "all", m) for m in _WEBNLG_METRICS),
    *(_nlg_column("webnlg", s, m) for m in _WEBNLG_METRICS for s in ("seen", "unseen", "all")),
)


# --------------------------------------------------------------------------- records


def _get(record: Mapping, path: str, default: Any = None) -> Any:
    """``record["a"]["b"]`` for ``path="a.b"``; ``default`` where a level is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _load(source: Records, experiment: str) -> list[dict]:
    """The records of ``experiment`` from a results folder or from records already loaded."""
    if isinstance(source, (str, os.PathLike)):
        return list(iter_records(source, experiment=experiment))
    return [record for record in source if record.get("experiment") == experiment]


def _glue_records(source: Records, experiment: str) -> list[dict]:
    return [r for r in _load(source, experiment) if isinstance(r.get("selected"), Mapping)]


def _nlg_records(source: Records, experiment: str) -> list[dict]:
    return [r for r in _load(source, experiment) if isinstance(r.get("metrics"), Mapping)]


def selection_value(record: Mapping) -> float:
    """What the grid search maximises: ``selected.value`` (GLUE) or BLEU on "all" (NLG).

    Missing, ``None`` and NaN give ``-inf``, so they never beat a number.
    """
    if isinstance(record.get("selected"), Mapping):
        value = record["selected"].get("value")
    elif isinstance(record.get("metrics"), Mapping):
        value = _get(record, "metrics.all.BLEU")
    else:
        raise ValueError(f"record {record.get('run_id', '?')!r} has neither 'selected' (GLUE) nor 'metrics' (NLG)")
    return float(value) if _is_number(value) and not math.isnan(value) else -math.inf


def _hashable(value: Any) -> Hashable:
    return canonical_json(value) if isinstance(value, (dict, list)) else value


def best_runs(records: Iterable[dict], by: Sequence[str | Callable[[dict], Hashable]] = ("task", "method"),
              ) -> dict[tuple, dict]:
    """Grid search: per group (by default task and method) the record with the best :func:`selection_value`.

    ``by`` holds dotted record paths (``"config.sparsity"``) or functions of a record. Returns
    ``{group key: record}``; among equal values the first record (in the given order) wins,
    and NaN never wins over a number (a group of NaN runs keeps its first record).
    """
    if isinstance(by, str):
        raise ValueError(f"by must be a sequence of keys, e.g. ('task', 'method'), got the string {by!r}")
    best: dict[tuple, dict] = {}
    for record in records:
        key = tuple(_hashable(k(record) if callable(k) else _get(record, k)) for k in by)
        if key not in best or selection_value(record) > selection_value(best[key]):
            best[key] = record
    return best


def _group_sizes(records: Iterable[dict], by: Sequence[str]) -> dict[tuple, int]:
    sizes: dict[tuple, int] = {}
    for record in records:
        key = tuple(_hashable(_get(record, k)) for k in by)
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


def _ordered_methods(methods: Iterable[str]) -> list[str]:
    methods = set(methods)
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def _ordered_tasks(tasks: Iterable[str]) -> list[str]:
    tasks = set(tasks)
    unknown = sorted(tasks - set(GLUE_ORDER))
    if unknown:
        logger.warning("records hold unknown GLUE task(s) %s; they are left out of the tables", unknown)
    return [t for t in GLUE_ORDER if t in tasks]


def method_name(method: str) -> str:
    """The paper's name of a method (``magnitude`` -> ``MaP``)."""
    return METHOD_NAMES.get(method, method)


def _glue_task(task: str):
    from .data.glue import get_task  # imported when needed: it pulls in `datasets`

    return get_task(task)


def _main_label(task: str) -> str:
    spec = _glue_task(task)
    name = "MNLI-m" if task == "mnli" else TASK_NAMES[task]
    return f"{name} ({METRIC_NAMES.get(spec.main_metric, spec.main_metric)})"


def _main_percent(record: Mapping | None) -> float | str:
    """The record's selected main metric in percent; "—" without a record or value."""
    if record is None:
        return MISSING
    value = _get(record, "selected.value")
    return 100.0 * float(value) if _is_number(value) else MISSING


def _round(value: Any, decimals: int) -> Any:
    return round(float(value), decimals) if _is_number(value) and math.isfinite(value) else value


def _average(values: Sequence[Any]) -> float | str:
    """Mean of numbers (NaN propagates); "—" when any value is missing or there is none."""
    if not values or any(not _is_number(v) for v in values):
        return MISSING
    return sum(values) / len(values)


def _column_value(record: Mapping | None, column: _Column, nlg: bool) -> Any:
    if record is None:
        return MISSING
    path = f"metrics.{column.split}.{column.metric}" if nlg else f"selected.metrics.{column.split}.{column.metric}"
    value = _get(record, path)
    return column.scale * float(value) if _is_number(value) else MISSING


def _sparsity_percent(records: Sequence[Mapping]) -> float | str:
    values = [100.0 * r["mean_sparsity"] for r in records if _is_number(r.get("mean_sparsity"))]
    return sum(values) / len(values) if values else MISSING


def _frame(rows: dict[str, dict], index_name: str | None, decimals: Mapping[str, int], note: str = "",
           ) -> "pd.DataFrame":
    import pandas as pd

    frame = pd.DataFrame.from_dict(rows, orient="index").astype(object)
    for column, places in decimals.items():
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v, p=places: _round(v, p))
    frame.index.name = index_name
    frame.attrs["decimals"] = dict(decimals)
    if note:
        frame.attrs["note"] = note
    return frame


# --------------------------------------------------------------------------- paper values


@functools.lru_cache(maxsize=4)
def _paper_file(path: str) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    check_paper_results(data)
    return data


def paper_results(path: str | os.PathLike | None = None) -> dict:
    """The paper's values with their sources (``pst/paper_results.json``), validated."""
    return _paper_file(str(Path(path) if path is not None else PAPER_RESULTS_PATH))


def check_paper_results(data: Mapping) -> None:
    """Raise ``ValueError`` unless ``data`` has the structure the report reads.

    ``{"note": str, "experiments": {experiment: {"methods": {method: {"source": str,
    "values": {task: {metric: number or null}}}}}}}``; a number needs a non-empty source.
    """
    if not isinstance(data.get("note"), str) or not data["note"]:
        raise ValueError("paper results need a top-level 'note' string")
    experiments = data.get("experiments")
    if not isinstance(experiments, Mapping):
        raise ValueError("paper results need an 'experiments' object")
    for experiment, entry in experiments.items():
        for method, values in _get(entry, "methods", {}).items():
            where = f"experiments.{experiment}.methods.{method}"
            if not isinstance(values.get("source"), str) or not values["source"]:
                raise ValueError(f"{where} needs a non-empty 'source' string")
            for task, metrics in values.get("values", {}).items():
                for metric, value in metrics.items():
                    if value is not None and not _is_number(value):
                        raise ValueError(f"{where}.values.{task}.{metric} must be a number or null, got {value!r}")


def paper_value(experiment: str, method: str, task: str, key: str, path: str | os.PathLike | None = None,
                ) -> float | None:
    """The paper's value for one cell, or ``None`` where none is recorded."""
    return _get(paper_results(path), f"experiments.{experiment}.methods.{method}.values.{task}.{key}")


def _paper_row(experiment: str, method: str, columns: Sequence[_Column], extra: Sequence[str]) -> dict:
    row: dict[str, Any] = {label: MISSING for label in extra}
    for column in columns:
        value = paper_value(experiment, method, column.task, column.paper_key)
        row[column.label] = MISSING if value is None else float(value)
    if AVERAGE_COLUMN in extra:
        value = paper_value(experiment, method, "average", "main_metrics")
        row[AVERAGE_COLUMN] = MISSING if value is None else float(value)
    return row


# --------------------------------------------------------------------------- result tables


def glue_table(results_dir: Records, experiment: str, paper: bool = True) -> "pd.DataFrame":
    """Our GLUE dev results (best of the grid) per method, each followed by the paper's row.

    Rows: methods in the order PST, MaP, MvP, Dense fine-tuning, LoRA (those with records),
    each followed by "<method> (paper)" when ``paper``. Columns: "Sparsity (%)" (mean measured
    sparsity of the selected runs), then the GLUE columns of the tasks present in the paper's
    order (MNLI-m/mm, QQP acc/F1, QNLI, SST-2, CoLA, STS-B Pearson/Spearman, MRPC acc/F1, RTE),
    then "Avg (main metrics)": the mean over tasks of each task's main metric, shown only for
    rows that have every task of the table. Values in percent, 1 decimal.
    """
    records = _glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no GLUE records of experiment {experiment!r} in {_describe(results_dir)}")
    best = best_runs(records)
    tasks = _ordered_tasks(task for task, _ in best)
    columns = [c for c in GLUE_COLUMNS if c.task in tasks]
    rows: dict[str, dict] = {}
    for method in _ordered_methods(method for _, method in best):
        chosen = {task: best.get((task, method)) for task in tasks}
        row: dict[str, Any] = {SPARSITY_COLUMN: _sparsity_percent([r for r in chosen.values() if r is not None])}
        row.update({c.label: _column_value(chosen[c.task], c, nlg=False) for c in columns})
        row[AVERAGE_COLUMN] = _average([_main_percent(chosen[task]) for task in tasks])
        rows[method_name(method)] = row
        if paper:
            rows[method_name(method) + PAPER_SUFFIX] = _paper_row(experiment, method, columns,
                                                                 (SPARSITY_COLUMN, AVERAGE_COLUMN))
    decimals = {label: 1 for label in (SPARSITY_COLUMN, AVERAGE_COLUMN, *(c.label for c in columns))}
    note = (f"{experiment}: GLUE dev sets, best run of the grid per task and method (selected by the task's "
            "main metric on the primary dev split, among evaluations at the target sparsity). Percent. "
            f"'{AVERAGE_COLUMN}': mean of MNLI-m acc, QQP F1, QNLI/SST-2/RTE acc, CoLA MCC, STS-B Pearson, "
            f"MRPC F1 over the tasks shown. '{MISSING}': no run, or no sourced paper value.")
    return _frame(rows, "Method", decimals, note)


def nlg_table(results_dir: Records, experiment: str = NLG_EXPERIMENT, paper: bool = True) -> "pd.DataFrame":
    """Our GPT-2 generation results per method, each followed by the paper's row.

    Rows as in :func:`glue_table`. Columns: "Sparsity (%)", then dataset x metric for what
    the records hold: E2E BLEU, NIST, METEOR, ROUGE-L, CIDEr; DART BLEU, METEOR, TER;
    WebNLG BLEU, METEOR, TER each on the seen, unseen and all subsets. BLEU, METEOR, ROUGE-L
    and TER in percent (TER: lower is better), NIST and CIDEr raw.
    """
    records = _nlg_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no NLG records of experiment {experiment!r} in {_describe(results_dir)}")
    best = best_runs(records)
    present = {(task, subset, metric) for (task, _), record in best.items()
               for subset, scores in record["metrics"].items() if isinstance(scores, Mapping)
               for metric in scores}
    columns = [c for c in NLG_COLUMNS if (c.task, c.split, c.metric) in present]
    unmeasured = False
    rows: dict[str, dict] = {}
    for method in _ordered_methods(method for _, method in best):
        chosen = {task: best.get((task, method)) for task in _NLG_DATASETS}
        row: dict[str, Any] = {SPARSITY_COLUMN: _sparsity_percent([r for r in chosen.values() if r is not None])}
        for column in columns:
            record = chosen[column.task]
            row[column.label] = _column_value(record, column, nlg=True)
            scores = _get(record, f"metrics.{column.split}") if record is not None else None
            unmeasured |= isinstance(scores, Mapping) and column.metric in scores and scores[column.metric] is None
        rows[method_name(method)] = row
        if paper:
            rows[method_name(method) + PAPER_SUFFIX] = _paper_row(experiment, method, columns, (SPARSITY_COLUMN,))
    decimals = {SPARSITY_COLUMN: 1, **{c.label: c.decimals for c in columns}}
    note = (f"{experiment}: test sets (or the records' eval split), one run per dataset and method (best BLEU on "
            "'all' when there are several). BLEU, METEOR, ROUGE-L, TER in percent (TER: lower is better); NIST, "
            f"CIDEr raw. '{MISSING}': no run, or no sourced paper value.")
    if unmeasured:
        note += f" Some METEOR cells are '{MISSING}' because Java was missing when the run was scored."
    return _frame(rows, "Method", decimals, note)


def selection_table(results_dir: Records, experiment: str) -> "pd.DataFrame":
    """What the grid search chose, per task and method: the settings and the value that won.

    Columns: Task, Method, Learning rate, Epochs, Runs in grid, Selected epoch, Selection metric,
    Selection value (GLUE in percent, NLG BLEU as recorded), Target sparsity reached.
    """
    records = _load(results_dir, experiment)
    records = [r for r in records if isinstance(r.get("selected"), Mapping) or isinstance(r.get("metrics"), Mapping)]
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {_describe(results_dir)}")
    best = best_runs(records)
    sizes = _group_sizes(records, ("task", "method"))
    order = {t: i for i, t in enumerate((*GLUE_ORDER, *_NLG_DATASETS))}
    methods = {m: i for i, m in enumerate(_ordered_methods(m for _, m in best))}
    rows = []
    for (task, method), record in sorted(best.items(), key=lambda kv: (order.get(kv[0][0], 99), str(kv[0][0]),
                                                                        methods[kv[0][1]])):
        glue = isinstance(record.get("selected"), Mapping)
        value = selection_value(record)
        rows.append({
            "Task": TASK_NAMES.get(task, _NLG_DATASETS.get(task, task)),
            "Method": method_name(method),
            "Learning rate": _get(record, "config.learning_rate", MISSING),
            "Epochs": _get(record, "config.epochs", MISSING),
            "Runs in grid": sizes[(task, method)],
            "Selected epoch": _get(record, "selected.epoch", MISSING) if glue else MISSING,
            "Selection metric": _get(record, "selected.metric", MISSING) if glue else "BLEU (all)",
            "Selection value": (100.0 * value if glue else value) if math.isfinite(value) else math.nan,
            "Target sparsity reached": _get(record, "selected.target_reached", MISSING) if glue else MISSING,
        })
    import pandas as pd

    frame = pd.DataFrame(rows).astype(object)
    frame.attrs["decimals"] = {"Selection value": 1, "Selected epoch": 1}
    frame.attrs["note"] = f"{experiment}: the run kept for each task and method, and the size of its grid."
    return frame


# --------------------------------------------------------------------------- ablations


def score_variant(record: Mapping) -> str:
    """Which score S a PST record used, by :data:`pst.profiles.SCORE_VARIANTS` name.

    Read from the record's ``pst_config`` switches (or the config's ``pst`` overrides on the
    defaults); a combination outside ``SCORE_VARIANTS`` is named by its terms.
    """
    from .profiles import SCORE_VARIANTS  # imported when needed: profiles pull in the runners

    switches = {"score_magnitude": True, "score_low_rank": True, "score_structured": True}
    source = record.get("pst_config")
    if not isinstance(source, Mapping):
        source = _get(record, "config.pst", {})
    switches.update({k: bool(v) for k, v in (source or {}).items() if k in switches})
    for name, overrides in SCORE_VARIANTS.items():
        if switches == {**{k: True for k in switches}, **overrides}:
            return name
    terms = [t for t, on in zip(("|W'|", "AB", "R + C"), switches.values()) if on]
    return " + ".join(terms)


def _ranks(record: Mapping) -> tuple[int, int]:
    def rank(key: str) -> int:
        value = _get(record, f"pst_config.{key}", _get(record, f"config.pst.{key}", 8))
        return int(value)

    return rank("weight_rank"), rank("score_rank")


def _main_metric_rows(best: Mapping[tuple, dict], row_keys: Sequence, labels: Mapping, tasks: Sequence[str],
                      ) -> dict[str, dict]:
    rows = {}
    for key in row_keys:
        values = {_main_label(task): _main_percent(best.get((task, key))) for task in tasks}
        rows[labels[key]] = {**values, AVERAGE_COLUMN: _average(list(values.values()))}
    return rows


def score_ablation_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["score"]) -> "pd.DataFrame":
    """PST with parts of its score S removed: rows score variants, columns tasks' main metric (%).

    Rows in :data:`pst.profiles.SCORE_VARIANTS` order (the last, ``|W'| + AB + R + C``, is the
    paper's PST); columns the tasks present (main metric on the primary dev split, percent)
    and "Avg (main metrics)".
    """
    records = _glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {_describe(results_dir)}")
    best = best_runs(records, by=("task", score_variant))
    variants = {variant for _, variant in best}
    from .profiles import SCORE_VARIANTS

    order = [v for v in SCORE_VARIANTS if v in variants] + sorted(variants - set(SCORE_VARIANTS))
    tasks = _ordered_tasks(task for task, _ in best)
    rows = _main_metric_rows(best, order, {v: v for v in order}, tasks)
    decimals = {c: 1 for c in (*(_main_label(t) for t in tasks), AVERAGE_COLUMN)}
    note = (f"{experiment}: PST on BERT with score S = |W'| + AB + R + C or parts of it; dev main metric in percent, "
            "best run per task and variant.")
    return _frame(rows, "Score S", decimals, note)


def rank_ablation_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["rank"]) -> "pd.DataFrame":
    """PST with other ranks: rows (r1, r2), columns tasks' main metric (%) and the added parameters.

    r1 is the weight update's rank (U: n x r1, V: r1 x k), r2 the score's (A, B). Rows sorted by
    (r1, r2); "Added parameters" is what the method adds to the model of those runs.
    """
    records = _glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {_describe(results_dir)}")
    best = best_runs(records, by=("task", _ranks))
    pairs = sorted({pair for _, pair in best})
    tasks = _ordered_tasks(task for task, _ in best)
    labels = {pair: f"r1={pair[0]}, r2={pair[1]}" for pair in pairs}
    rows = _main_metric_rows(best, pairs, labels, tasks)
    for pair in pairs:
        added = [_get(r, "trainable_parameters.added") for (t, p), r in best.items() if p == pair]
        added = [a for a in added if _is_number(a)]
        rows[labels[pair]]["Added parameters"] = int(max(added)) if added else MISSING
    decimals = {c: 1 for c in (*(_main_label(t) for t in tasks), AVERAGE_COLUMN)}
    note = (f"{experiment}: PST on BERT; r1 = rank of the weight update UV, r2 = rank of the score term AB "
            "(the paper uses r1 = r2 = 8). Dev main metric in percent.")
    return _frame(rows, "Ranks (r1 update, r2 score)", decimals, note)


def _sparsity_best(results_dir: Records, experiment: str) -> dict[tuple, dict]:
    records = _glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {_describe(results_dir)}")
    return best_runs(records, by=("task", "method", "config.sparsity"))


def sparsity_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["sparsity"]) -> "pd.DataFrame":
    """Main metric against target sparsity: rows sparsities, columns task x method (percent).

    Columns are "<task (metric)> <method>", task-major in the paper's task order, methods in
    the order PST, MaP, MvP.
    """
    best = _sparsity_best(results_dir, experiment)
    tasks = _ordered_tasks(task for task, _, _ in best)
    methods = _ordered_methods(method for _, method, _ in best)
    sparsities = sorted({s for _, _, s in best if _is_number(s)})
    rows = {}
    for sparsity in sparsities:
        rows[f"{100 * sparsity:g}%"] = {
            f"{_main_label(task)} {method_name(method)}": _main_percent(best.get((task, method, sparsity)))
            for task in tasks for method in methods
        }
    columns = [f"{_main_label(t)} {method_name(m)}" for t in tasks for m in methods]
    note = f"{experiment}: dev main metric (percent) of the best run per task, method and target sparsity."
    return _frame(rows, "Target sparsity", {c: 1 for c in columns}, note)


def sparsity_figure(results_dir: Records, path_stem: str | os.PathLike | None = None,
                    experiment: str = ABLATION_EXPERIMENTS["sparsity"]) -> "Figure":
    """Main dev metric against target sparsity: one panel per task, one line per method.

    Saved as ``<path_stem>.png`` and ``.pdf`` when ``path_stem`` is given; always returned.
    """
    best = _sparsity_best(results_dir, experiment)
    tasks = _ordered_tasks(task for task, _, _ in best)
    methods = _ordered_methods(method for _, method, _ in best)
    models = sorted({str(_get(r, "config.model", r.get("model_name", "?"))) for r in best.values()})
    columns = min(len(tasks), 4) or 1
    grid_rows = math.ceil(max(len(tasks), 1) / columns)
    figure = _new_figure(3.6 * columns, 3.0 * grid_rows + 0.4)
    axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.remove()
    for ax, task in zip(axes, tasks):
        main = _glue_task(task).main_metric
        metric = METRIC_NAMES.get(main, main)
        for method in methods:
            points = sorted((100 * s, _main_percent(r)) for (t, m, s), r in best.items()
                            if t == task and m == method and _is_number(s))
            points = [(x, y) for x, y in points if _is_number(y)]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=method_name(method), linewidth=1.5, markersize=5,
                        **METHOD_STYLE.get(method, {}))
        ax.set_title(f"{_main_label(task)}", fontsize=10)
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel(f"dev {metric} (%)")
        ax.grid(True, linewidth=0.4, alpha=0.5)
    if tasks:
        axes[0].legend(fontsize=8)
    figure.suptitle(f"Dev metric against sparsity\n(model: {', '.join(models)})", fontsize=10)
    if path_stem is not None:
        save_figure(figure, path_stem)
    return figure


# --------------------------------------------------------------------------- computed from the code


def _build_model(model: str):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaModel

    if model == "BERT-base":
        return BertModel(BertConfig())
    if model == "RoBERTa-base":
        return RobertaModel(RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5))
    if model == "GPT-2 medium":
        return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))
    raise ValueError(f"unknown model shape {model!r}; expected one of {list(PARAMETER_COUNT_MODELS)}")


PARAMETER_COUNT_MODELS = ("BERT-base", "RoBERTa-base", "GPT-2 medium")


@functools.lru_cache(maxsize=None)
def parameter_counts(model: str, method: str) -> dict[str, int]:
    """Counts of ``method`` on ``model``'s shapes, as :func:`pst.trainable_parameters` gives them.

    Built on the meta device (no memory, no download), head excluded (``head_modules=[]``).
    Keys: trainable, total, added, sparsified_weights (weights of the sparsified matrices).
    """
    import torch

    from .config import PSTConfig
    from .surgery import sparse_layers, sparsify, trainable_parameters

    with torch.device("meta"):
        net = sparsify(_build_model(model), PSTConfig(method=method, head_modules=[]))
    counts = trainable_parameters(net)
    sparsified = sum(layer.weight.numel() for _, layer in sparse_layers(net))
    if not sparsified and method != "dense":
        raise ValueError(f"{method} sparsified nothing on {model}")
    if method == "dense":  # dense wraps nothing: count the matrices the others sparsify
        sparsified = parameter_counts(model, "pst")["sparsified_weights"]
    return {"trainable": counts.trainable, "total": counts.total, "added": counts.added,
            "sparsified_weights": sparsified}


def criteria_table() -> "pd.DataFrame":
    """Table 1 of the paper computed from the code: criterion, data, extra trainable parameters.

    Rows MaP, MvP, PST; counts on BERT-base shapes (meta device, task head excluded). Columns:

    * "Extra trainable params": parameters the method adds (0; the 85M score matrix; U, V, A, B, R, C);
    * "Extra ÷ sparsified weights (×)": that count divided by the number of weights in the
      sparsified matrices (the 72 encoder matrices, 84,934,656, biases excluded);
    * "Trainable ÷ MvP trainable (%)": the method's trainable parameters divided by MvP's
      (all 109,482,240 pre-trained parameters plus its 84,934,656 scores);
    * "Paper: extra (×)", "Paper: trainable": the paper's Table 1 entry and the abstract's
      headline, from ``paper_results.json`` ("—" where it says nothing).
    """
    paper = paper_results()["table1"]["methods"]
    movement = parameter_counts("BERT-base", "movement")
    rows = {}
    for method in ("magnitude", "movement", "pst"):
        spec, counts = get_method(method), parameter_counts("BERT-base", method)
        rows[method_name(method)] = {
            "Criterion (score)": spec.criterion,
            "Needs data": "yes" if spec.needs_data else "no",
            "Extra trainable params": counts["added"],
            "Extra ÷ sparsified weights (×)": counts["added"] / counts["sparsified_weights"],
            "Trainable ÷ MvP trainable (%)": 100.0 * counts["trainable"] / movement["trainable"],
            "Paper: extra (×)": _get(paper, f"{method}.extra_trainable") or MISSING,
            "Paper: trainable": _get(paper, f"{method}.trainable_share") or MISSING,
        }
    note = ("Counts on BERT-base shapes (meta device, task head excluded) from pst.trainable_parameters. "
            "'Extra ÷ sparsified weights' = parameters the method adds / weights of the 72 sparsified encoder "
            f"matrices ({movement['sparsified_weights']:,}). 'Trainable ÷ MvP trainable' = the method's trainable "
            f"parameters / MvP's ({movement['trainable']:,}: every pre-trained parameter plus the scores). "
            "Paper columns: Table 1 and the abstract, as summarised in shared/PAPER.md.")
    return _frame(rows, "Method", {"Extra ÷ sparsified weights (×)": 4, "Trainable ÷ MvP trainable (%)": 2}, note)


def parameter_counts_table(models: Sequence[str] = PARAMETER_COUNT_MODELS,
                           methods: Sequence[str] = METHOD_ORDER) -> "pd.DataFrame":
    """Trainable, total and percent for each method on BERT-base, RoBERTa-base and GPT-2 medium shapes.

    Counted as :func:`pst.trainable_parameters` does, task head excluded; "Total" includes the
    parameters the method adds, and "Trainable (%)" = 100 x Trainable / Total.
    """
    import pandas as pd

    rows = []
    for model in models:
        for method in methods:
            counts = parameter_counts(model, method)
            rows.append({"Model": model, "Method": method_name(method), "Added": counts["added"],
                         "Trainable": counts["trainable"], "Total": counts["total"],
                         "Trainable (%)": 100.0 * counts["trainable"] / counts["total"]})
    frame = pd.DataFrame(rows).astype(object)
    frame["Trainable (%)"] = frame["Trainable (%)"].map(lambda v: round(v, 3))
    frame.attrs["decimals"] = {"Trainable (%)": 3}
    frame.attrs["note"] = ("Meta-device models with the pre-trained models' shapes, task head excluded "
                           "(GPT-2's tied LM head counted once). Ranks r1 = r2 = 8.")
    return frame


# --------------------------------------------------------------------------- analysis (score structure)


def score_structure_outputs(results_dir: str | os.PathLike, out_dir: str | os.PathLike, rank: int = 8,
                            experiment: str = ANALYSIS_EXPERIMENT) -> dict[str, list[Path]]:
    """Tables and figures of movement pruning's learned score structure, per analysis run.

    For every movement record of ``experiment`` whose ``.scores.safetensors`` side file exists:
    ``tables/score_structure_<task>`` (:func:`pst.analysis.layer_structure_table`) and
    ``figures/score_spectra_<task>``, ``score_explained_share_<task>``, ``score_heatmaps_<task>``.
    """
    from . import analysis

    out_dir, written = Path(out_dir), {}
    for record in iter_records(results_dir, experiment=experiment, method="movement"):
        path = record_path(results_dir, record["run_id"])
        scores_file = path.with_name(path.name.removesuffix(".json") + analysis.SCORES_SUFFIX)
        if not scores_file.is_file():
            logger.info("analysis run %s has no score file (%s): skipped", record["run_id"], scores_file.name)
            continue
        suffix = f"_{record['task']}"
        outputs = {f"tables/score_structure{suffix}": [out_dir / "tables" / f"score_structure{suffix}{ext}"
                                                       for ext in (".md", ".tex", ".csv")]}
        outputs |= {f"figures/{name}{suffix}": [out_dir / "figures" / f"{name}{suffix}{ext}" for ext in (".png", ".pdf")]
                    for name in ("score_spectra", "score_explained_share", "score_heatmaps")}
        csv = out_dir / "tables" / f"score_structure{suffix}.csv"
        if _up_to_date([p for paths in outputs.values() for p in paths], scores_file) and _table_rank(csv) == rank:
            # Notebook 02 and the report both ask for these; the SVDs run once per score file and rank.
            written.update(outputs)
            continue
        layers = analysis.load_scores(scores_file)
        scores = {name: parts["scores"] for name, parts in layers.items() if "scores" in parts}
        if not scores:
            logger.info("score file %s holds no movement scores: skipped", scores_file.name)
            continue
        table = analysis.layer_structure_table(scores, rank=rank)
        table.attrs["decimals"] = {c: 3 for c in table.columns if table[c].dtype.kind == "f"}
        table.attrs["note"] = (f"Movement pruning's learned scores ({record['run_id']}): share of ||S - mean||_F^2 "
                               f"explained by row/column effects, rank {rank}, and both; shuffled S as a baseline.")
        written[f"tables/score_structure{suffix}"] = save_table(table, out_dir / "tables" / f"score_structure{suffix}")
        for name, figure in (("score_spectra", analysis.spectrum_figure(scores, rank=rank)),
                             ("score_explained_share", analysis.explained_share_figure(table)),
                             ("score_heatmaps", analysis.heatmap_figure(dict(list(scores.items())[:3]), rank=rank))):
            written[f"figures/{name}{suffix}"] = save_figure(figure, out_dir / "figures" / f"{name}{suffix}")
    return written


def _table_rank(csv: Path) -> int | None:
    """The rank a saved score-structure table was computed with (its ``rank`` column)."""
    import pandas as pd

    ranks = set(pd.read_csv(csv)["rank"]) if csv.is_file() else set()
    return int(ranks.pop()) if len(ranks) == 1 else None


def _up_to_date(outputs: list[Path], source: Path) -> bool:
    """Every output exists and is at least as new as the file it was computed from."""
    source_time = source.stat().st_mtime
    return all(path.is_file() and path.stat().st_mtime >= source_time for path in outputs)


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _format_cell(value: Any, decimals: int | None) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:g}"
    return str(value)


def display_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``frame`` as strings, as the Markdown and LaTeX files show it (decimals from ``frame.attrs``)."""
    decimals = frame.attrs.get("decimals", {})
    shown = frame.copy().astype(object)
    for column in shown.columns:
        shown[column] = [_format_cell(v, decimals.get(column)) for v in frame[column]]
    return shown


def _has_index(frame: "pd.DataFrame") -> bool:
    return frame.index.name is not None


def save_table(frame: "pd.DataFrame", path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.md`` (Markdown), ``<stem>.tex`` (LaTeX, escaped) and ``<stem>.csv``, atomically.

    Markdown and LaTeX show the formatted values (see :func:`display_frame`) and the table's
    note (``frame.attrs["note"]``: below the Markdown table, as a comment above the LaTeX one);
    the CSV holds the values themselves. The index is written when it has a name.
    """
    stem = Path(path_stem)
    index = _has_index(frame)
    shown = display_frame(frame)
    note = frame.attrs.get("note", "")

    markdown = shown.map(lambda s: s.replace("|", "\\|"))
    markdown.columns = [str(c).replace("|", "\\|") for c in shown.columns]
    if index:
        markdown.index = [str(i).replace("|", "\\|") for i in shown.index]
        markdown.index.name = frame.index.name
    colalign = (("left",) if index else ()) + tuple(
        "right" if frame[c].map(lambda v: _is_number(v) or v == MISSING).all() else "left" for c in frame.columns)
    md_text = markdown.to_markdown(index=index, disable_numparse=True, colalign=colalign) + "\n"
    if note:
        md_text += f"\n{note}\n"

    column_format = ("l" if index else "") + "".join("r" if a == "right" else "l" for a in colalign[int(index):])
    tex_text = shown.to_latex(index=index, escape=True, column_format=column_format).replace("|", r"\textbar{}")
    if note:
        tex_text = "".join(f"% {line}\n" for line in note.splitlines()) + tex_text

    written = []
    for suffix, text in ((".md", md_text), (".tex", tex_text), (".csv", frame.to_csv(index=index))):
        path = stem.with_name(stem.name + suffix)
        written.append(_atomic_write(path, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8")))
    logger.info("wrote table %s (.md, .tex, .csv)", stem)
    return written


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure  # not pyplot: no global state, rendered with Agg

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: "Figure", path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` atomically; returns both paths."""
    stem = Path(path_stem)
    written = []
    for fmt, options in (("png", {"dpi": FIGURE_DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        path = stem.with_name(f"{stem.name}.{fmt}")
        written.append(_atomic_write(path, lambda tmp, f=fmt, o=options: figure.savefig(tmp, format=f, **o)))
    logger.info("wrote figure %s (.png, .pdf)", stem)
    return written


# --------------------------------------------------------------------------- everything


def _describe(source: Records) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the given records"


def build_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, analysis: bool = True,
                 ) -> dict[str, list[Path]]:
    """Every table and figure the records allow, under ``out_dir/tables`` and ``out_dir/figures``.

    Always writes ``criteria`` (Table 1) and ``parameter_counts``; then, for each experiment
    with records, its tables (``glue_bert``, ``glue_roberta``, ``nlg_gpt2`` with their
    ``*_selection`` grids, ``analysis_runs``, ``ablation_score``, ``ablation_rank``,
    ``ablation_sparsity``) and figures (``ablation_sparsity``; the score-structure outputs of
    :func:`score_structure_outputs` when ``analysis``). Experiments without records are
    skipped with a logged note. Returns ``{"tables/<name>" or "figures/<name>": paths}``.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    tables, figures = out_dir / "tables", out_dir / "figures"
    records = [r for r in iter_records(results_dir) if "experiment" in r]
    present = {r["experiment"] for r in records}
    written: dict[str, list[Path]] = {}

    def table(name: str, frame: "pd.DataFrame") -> None:
        written[f"tables/{name}"] = save_table(frame, tables / name)

    table("criteria", criteria_table())
    table("parameter_counts", parameter_counts_table())

    def skip(experiment: str) -> bool:
        if experiment not in present:
            logger.info("no records of experiment %r in %s yet: its tables are skipped", experiment, results_dir)
            return True
        return False

    for experiment, stem in GLUE_EXPERIMENTS.items():
        if not skip(experiment):
            table(stem, glue_table(records, experiment))
            table(f"{stem}_selection", selection_table(records, experiment))
    if not skip(NLG_EXPERIMENT):
        table("nlg_gpt2", nlg_table(records))
        table("nlg_gpt2_selection", selection_table(records, NLG_EXPERIMENT))
    if not skip(ANALYSIS_EXPERIMENT):
        table("analysis_runs", glue_table(records, ANALYSIS_EXPERIMENT, paper=False))
        if analysis:
            written.update(score_structure_outputs(results_dir, out_dir))
    if not skip(ABLATION_EXPERIMENTS["score"]):
        table("ablation_score", score_ablation_table(records))
    if not skip(ABLATION_EXPERIMENTS["rank"]):
        table("ablation_rank", rank_ablation_table(records))
    if not skip(ABLATION_EXPERIMENTS["sparsity"]):
        table("ablation_sparsity", sparsity_table(records))
        written["figures/ablation_sparsity"] = save_figure(sparsity_figure(records), figures / "ablation_sparsity")
    unknown = sorted(present - set(KNOWN_EXPERIMENTS))
    if unknown:
        logger.info("records of experiment(s) %s are not part of the report", unknown)
    return written


__all__ = [
    "GLUE_COLUMNS", "METHOD_NAMES", "METHOD_ORDER", "MISSING", "NLG_COLUMNS", "PAPER_RESULTS_PATH",
    "best_runs", "build_report", "check_paper_results", "criteria_table", "display_frame", "glue_table",
    "method_name", "nlg_table", "paper_results", "paper_value", "parameter_counts", "parameter_counts_table",
    "rank_ablation_table", "save_figure", "save_table", "score_ablation_table", "score_structure_outputs",
    "score_variant", "selection_table", "selection_value", "sparsity_figure", "sparsity_table",
]
