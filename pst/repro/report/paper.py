"""The paper's values, from one data file with the source of each (``paper_results.json``)."""
from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)
from .columns import AVERAGE_COLUMN, MISSING, Column
from .records import get, is_number

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
