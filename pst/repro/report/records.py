"""Which records a table reads, and which run of a grid wins (the grid search)."""
from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..results import canonical_json, iter_records

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)



#: A results folder, or records already read from one.
Records = Union[str, os.PathLike, Iterable[dict]]


GLUE_EXPERIMENTS = {"glue-bert": "glue_bert", "glue-roberta": "glue_roberta"}


NLG_EXPERIMENT = "nlg-gpt2"


ANALYSIS_EXPERIMENT = "analysis"


ABLATION_EXPERIMENTS = {"score": "ablation-score", "rank": "ablation-rank", "sparsity": "ablation-sparsity"}


KNOWN_EXPERIMENTS = (*GLUE_EXPERIMENTS, NLG_EXPERIMENT, ANALYSIS_EXPERIMENT, *ABLATION_EXPERIMENTS.values())


def get(record: Mapping, path: str, default: Any = None) -> Any:
    """``record["a"]["b"]`` for ``path="a.b"``; ``default`` where a level is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def load(source: Records, experiment: str) -> list[dict]:
    """The records of ``experiment`` from a results folder or from records already loaded."""
    if isinstance(source, (str, os.PathLike)):
        return list(iter_records(source, experiment=experiment))
    return [record for record in source if record.get("experiment") == experiment]


def glue_records(source: Records, experiment: str) -> list[dict]:
    return [r for r in load(source, experiment) if isinstance(r.get("selected"), Mapping)]


def nlg_records(source: Records, experiment: str) -> list[dict]:
    return [r for r in load(source, experiment) if isinstance(r.get("metrics"), Mapping)]


def selection_value(record: Mapping) -> float:
    """What the grid search maximises: ``selected.value`` (GLUE) or BLEU on "all" (NLG).

    Missing, ``None`` and NaN give ``-inf``, so they never beat a number.
    """
    if isinstance(record.get("selected"), Mapping):
        value = record["selected"].get("value")
    elif isinstance(record.get("metrics"), Mapping):
        value = get(record, "metrics.all.BLEU")
    else:
        raise ValueError(f"record {record.get('run_id', '?')!r} has neither 'selected' (GLUE) nor 'metrics' (NLG)")
    return float(value) if is_number(value) and not math.isnan(value) else -math.inf


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
        key = tuple(_hashable(k(record) if callable(k) else get(record, k)) for k in by)
        if key not in best or selection_value(record) > selection_value(best[key]):
            best[key] = record
    return best


def group_sizes(records: Iterable[dict], by: Sequence[str]) -> dict[tuple, int]:
    sizes: dict[tuple, int] = {}
    for record in records:
        key = tuple(_hashable(get(record, k)) for k in by)
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


def describe(source: Records) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the given records"
