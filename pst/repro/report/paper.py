"""Published values, from one data file with the source of each (``paper_results.json``).

Two kinds: the PST paper's own numbers (``experiments``; none were available to us, so
every one is null and shows "—"), and numbers other papers report for the same methods
(``published``: APT's Table 7 for BERT-base on GLUE), always shown with that paper named.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .columns import AVERAGE_COLUMN, MISSING, SPARSITY_COLUMN, Column, main_label, method_name, ordered_tasks, task_name
from .records import get, is_number

logger = logging.getLogger(__name__)

PAPER_RESULTS_PATH = Path(__file__).with_name("paper_results.json")


PAPER_SUFFIX = " (paper)"


@functools.lru_cache(maxsize=4)
def _paper_file(path: str) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    check_paper_results(data)
    return data


def paper_results(path: str | os.PathLike | None = None) -> dict:
    """The paper's values with their sources (``pst/repro/report/paper_results.json``), validated."""
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
        for method, values in get(entry, "methods", {}).items():
            where = f"experiments.{experiment}.methods.{method}"
            if not isinstance(values.get("source"), str) or not values["source"]:
                raise ValueError(f"{where} needs a non-empty 'source' string")
            for task, metrics in values.get("values", {}).items():
                for metric, value in metrics.items():
                    if value is not None and not is_number(value):
                        raise ValueError(f"{where}.values.{task}.{metric} must be a number or null, got {value!r}")
    for experiment, entry in data.get("published", {}).items():
        where = f"published.{experiment}"
        for key in ("label", "source", "unknown"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ValueError(f"{where} needs a non-empty {key!r} string")
        for index, row in enumerate(entry.get("rows", [])):
            numbers = [row.get("sparsity"), row.get("average"), *row.get("values", {}).values()]
            if not isinstance(row.get("method"), str) or not all(is_number(v) for v in numbers):
                raise ValueError(f"{where}.rows[{index}] needs a method, a sparsity, an average and numeric values")


def paper_value(experiment: str, method: str, task: str, key: str, path: str | os.PathLike | None = None,
                ) -> float | None:
    """The paper's value for one cell, or ``None`` where none is recorded."""
    return get(paper_results(path), f"experiments.{experiment}.methods.{method}.values.{task}.{key}")


def paper_row(experiment: str, method: str, columns: Sequence[Column], extra: Sequence[str]) -> dict:
    row: dict[str, Any] = {label: MISSING for label in extra}
    for column in columns:
        value = paper_value(experiment, method, column.task, column.paper_key)
        row[column.label] = MISSING if value is None else float(value)
    if AVERAGE_COLUMN in extra:
        value = paper_value(experiment, method, "average", "main_metrics")
        row[AVERAGE_COLUMN] = MISSING if value is None else float(value)
    return row


def published(experiment: str, path: str | os.PathLike | None = None) -> Mapping | None:
    """What another paper reports for ``experiment`` (label, source, unknown, rows), or ``None``."""
    return get(paper_results(path), f"published.{experiment}")


def published_rows(experiment: str, method: str, columns: Sequence[Column], extra: Sequence[str],
                   all_tasks: bool) -> dict[str, dict]:
    """Table rows of the values another paper reports for ``method``, highest sparsity first.

    Each task's single number goes in the column of its main metric ("MNLI-m (acc)"), the column
    we compare it with; the other columns of the task stay "—". The reported average is shown
    only when the table has every task it averages (``all_tasks``).
    """
    entry = published(experiment)
    if entry is None:
        return {}
    rows = {}
    for row in sorted((r for r in entry["rows"] if r["method"] == method), key=lambda r: -r["sparsity"]):
        cells: dict[str, Any] = {label: MISSING for label in extra}
        cells.update({column.label: MISSING for column in columns})
        for column in columns:
            if column.label == main_label(column.task) and column.task in row["values"]:
                cells[column.label] = float(row["values"][column.task])
        if SPARSITY_COLUMN in cells:
            cells[SPARSITY_COLUMN] = 100.0 * row["sparsity"]
        if AVERAGE_COLUMN in cells and all_tasks:
            cells[AVERAGE_COLUMN] = float(row["average"])
        rows[f"{method_name(method)} at {row['sparsity']:.0%}, {entry['label']}"] = cells
    return rows


def published_table(experiment: str) -> "Any":
    """Another paper's numbers as it prints them: one per task, our column for each named below.

    Rows: method at each sparsity; columns: the tasks in the paper's order, then its average.
    The note names the source, our column each number is compared with, and what is unknown.
    """
    import pandas as pd

    entry = published(experiment)
    if entry is None:
        raise ValueError(f"no published values for {experiment!r} in {PAPER_RESULTS_PATH.name}")
    tasks = ordered_tasks(task for row in entry["rows"] for task in row["values"])
    rows = {}
    for row in sorted(entry["rows"], key=lambda r: -r["sparsity"]):
        label = f"{method_name(row['method'])} at {row['sparsity']:.0%}"
        rows[label] = {**{task_name(t): row["values"].get(t, MISSING) for t in tasks}, "Avg": row["average"]}
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(object)
    frame.index.name = "Method, sparsity"
    compared = ", ".join(f"{task_name(t)} -> {main_label(t)}" for t in tasks)
    frame.attrs["decimals"] = {column: 1 for column in frame.columns}
    frame.attrs["note"] = (f"{entry['label']}: {entry['source']}. Compared with our columns {compared}. "
                           f"{entry['unknown']}")
    return frame
