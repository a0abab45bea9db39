"""The rows and columns of the result tables, and how a record fills a cell."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from ...methods import METHODS
from ..glue_tasks import GLUE_TASKS, get_task
from .records import get, is_number

logger = logging.getLogger(__name__)

MISSING = "—"


#: Row order of every table: the order of ``pst.METHODS``.
METHOD_ORDER = tuple(METHODS)


GLUE_ORDER = tuple(GLUE_TASKS)  # the paper's column order


METRIC_NAMES = {"accuracy": "acc", "f1": "F1", "matthews_correlation": "MCC", "pearson": "Pearson",
                "spearmanr": "Spearman"}


SPARSITY_COLUMN = "Sparsity (%)"


AVERAGE_COLUMN = "Avg (main metrics)"


@dataclass(frozen=True)
class Column:
    """One numeric column: where its value lives in a record and in paper_results.json."""

    label: str
    task: str
    split: str  # GLUE dev split, or NLG subset ("all", "seen", "unseen")
    metric: str
    paper_key: str
    decimals: int = 1
    scale: float = 100.0  # record value -> shown value (GLUE fractions -> percent)


#: Every dev split and metric of every task, in the paper's order ("MNLI-m (acc)", ...,
#: "RTE (acc)"); the paper key of MNLI's splits carries the split ("accuracy_matched").
GLUE_COLUMNS: tuple[Column, ...] = tuple(
    Column(f"{task.split_name(split)} ({METRIC_NAMES[metric]})", task.name, split, metric,
           metric + split.removeprefix("validation"))
    for task in GLUE_TASKS.values() for split in task.eval_splits for metric in task.metrics
)


NLG_DATASETS = {"e2e": "E2E", "dart": "DART", "webnlg": "WebNLG"}


_NLG_LABELS = {"ROUGE_L": "ROUGE-L"}


_E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


_WEBNLG_METRICS = ("BLEU", "METEOR", "TER")


_RAW_METRICS = {"NIST", "CIDEr"}  # not percentages: 2 decimals


def _nlg_column(task: str, subset: str, metric: str) -> Column:
    name = f"{NLG_DATASETS[task]} {_NLG_LABELS.get(metric, metric)}"
    if task == "webnlg":
        return Column(f"{name} ({subset})", task, subset, metric, f"{metric}_{subset}",
                       decimals=2 if metric in _RAW_METRICS else 1, scale=1.0)
    return Column(name, task, subset, metric, metric, decimals=2 if metric in _RAW_METRICS else 1, scale=1.0)


NLG_COLUMNS: tuple[Column, ...] = (
    *(_nlg_column("e2e", "all", m) for m in _E2E_METRICS),
    *(_nlg_column("dart", "all", m) for m in _WEBNLG_METRICS),
    *(_nlg_column("webnlg", s, m) for m in _WEBNLG_METRICS for s in ("seen", "unseen", "all")),
)


def ordered_methods(methods: Iterable[str]) -> list[str]:
    methods = set(methods)
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    tasks = set(tasks)
    unknown = sorted(tasks - set(GLUE_ORDER))
    if unknown:
        logger.warning("records hold unknown GLUE task(s) %s; they are left out of the tables", unknown)
    return [t for t in GLUE_ORDER if t in tasks]


def task_sort_key(task: str) -> tuple[int, str]:
    """Sorts GLUE tasks in the paper's order, then E2E, DART, WebNLG, then anything else by name."""
    order = (*GLUE_ORDER, *NLG_DATASETS)
    return (order.index(task) if task in order else len(order), str(task))


def method_name(method: str) -> str:
    """The paper's name of a method (``magnitude`` -> ``MaP``); an unknown method keeps its own."""
    return METHODS[method].display_name if method in METHODS else method


def method_style(method: str) -> dict:
    """One colour and marker per method, the same in every figure (matplotlib keywords)."""
    return dict(color=METHODS[method].color, marker=METHODS[method].marker) if method in METHODS else {}


def task_name(task: str) -> str:
    """How the paper writes a GLUE task or NLG data set ("SST-2", "WebNLG"); else the name itself."""
    if task in GLUE_TASKS:
        return GLUE_TASKS[task].display_name
    return NLG_DATASETS.get(task, task)


def main_label(task: str) -> str:
    """The column of a task's main metric on its primary dev split: "MNLI-m (acc)"."""
    spec = get_task(task)
    return f"{spec.split_name(spec.eval_splits[0])} ({METRIC_NAMES.get(spec.main_metric, spec.main_metric)})"


def main_percent(record: Mapping | None) -> float | str:
    """The record's selected main metric in percent; "—" without a record or value."""
    if record is None:
        return MISSING
    value = get(record, "selected.value")
    return 100.0 * float(value) if is_number(value) else MISSING


def _round(value: Any, decimals: int) -> Any:
    return round(float(value), decimals) if is_number(value) and math.isfinite(value) else value


def average(values: Sequence[Any]) -> float | str:
    """Mean of numbers (NaN propagates); "—" when any value is missing or there is none."""
    if not values or any(not is_number(v) for v in values):
        return MISSING
    return sum(values) / len(values)


def column_value(record: Mapping | None, column: Column, nlg: bool) -> Any:
    if record is None:
        return MISSING
    path = f"metrics.{column.split}.{column.metric}" if nlg else f"selected.metrics.{column.split}.{column.metric}"
    value = get(record, path)
    return column.scale * float(value) if is_number(value) else MISSING


def sparsity_percent(records: Sequence[Mapping]) -> float | str:
    values = [100.0 * r["mean_sparsity"] for r in records if is_number(r.get("mean_sparsity"))]
    return sum(values) / len(values) if values else MISSING


def frame(rows: dict[str, dict], index_name: str | None, decimals: Mapping[str, int], note: str = "",
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
