"""Which records a table reads, and which run of a grid wins (the grid search).

An experiment's records are those its membership files name (:mod:`pst.repro.experiments`);
a record read from a folder carries ``experiments``, the experiments that refer to it.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np

from ..experiments import memberships
from ..results import canonical_json, record_path
from ..runstate import RunPaths, RunState, run_state

logger = logging.getLogger(__name__)

#: A results folder, or records already read from one (with their ``experiments``).
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


def member_states(results_dir: str | os.PathLike) -> dict[str, dict[str, RunState]]:
    """``{experiment: {run_id: RunState}}`` for every run an experiment refers to."""
    states: dict[str, RunState] = {}
    out = {}
    for experiment, run_ids in memberships(results_dir).items():
        out[experiment] = {}
        for run_id in run_ids:
            if run_id not in states:
                states[run_id] = run_state(RunPaths(run_id, record_path(results_dir, run_id)))
            out[experiment][run_id] = states[run_id]
    return out


def read_results(results_dir: str | os.PathLike, keep_stale: bool = False) -> list[dict]:
    """The records that experiments refer to, each with its ``experiments``, sorted by run id.

    Records of other code are left out unless ``keep_stale``; what is left out (no record
    yet, unreadable, other code) is logged per experiment: nothing is dropped silently.
    """
    by_run: dict[str, dict] = {}
    for experiment, states in member_states(results_dir).items():
        left_out: dict[str, list[str]] = {}
        for run_id, state in states.items():
            usable = state.status == "done" or (keep_stale and state.status == "other-code")
            if not usable:
                left_out.setdefault(state.status, []).append(run_id)
                continue
            by_run.setdefault(run_id, {**state.record, "experiments": []})["experiments"].append(experiment)
        for status, run_ids in left_out.items():
            logger.warning("%s: %d of %d runs left out of its tables (%s), e.g. %s", experiment, len(run_ids),
                           len(states), STATUS_NOTES[status], run_ids[0])
    return [by_run[run_id] for run_id in sorted(by_run)]


#: Why a run an experiment refers to is not in its tables.
STATUS_NOTES = {"missing": "no record yet", "unreadable": "unreadable record; rerun its notebook to redo it",
                "other-code": "made by other code; rerun with --rerun-stale or keep with --keep-stale-records"}


def load(source: Records, experiment: str) -> list[dict]:
    """The records of ``experiment`` from a results folder or from records already loaded."""
    records = read_results(source) if isinstance(source, (str, os.PathLike)) else source
    return [record for record in records if experiment in record.get("experiments", ())]


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
