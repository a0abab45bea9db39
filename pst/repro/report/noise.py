"""How far a dev-set number moves by chance: its standard error, and whether two runs differ by more.

One seed per configuration leaves one source of noise we can still put a number on: the dev
set is a sample. For accuracy (and F1, read as a proportion) the standard error is
``sqrt(p (1 - p) / n)`` with ``p`` taken as ``(k + 1) / (n + 2)`` for ``k`` of ``n`` right (Laplace's
rule, so that 100% on 128 examples is not certain); for a correlation (Pearson, Spearman, Matthews) ``(1 - r^2) / sqrt(n - 3)``
(the delta method on Fisher's z). Seed-to-seed variation comes on top, so a gap inside two
standard errors is certainly noise, and one outside may still be.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

from ..glue_tasks import get_task
from .columns import MISSING, main_percent, method_name, ordered_methods, ordered_tasks, task_name
from .records import Records, best_runs, get, glue_records, is_number

_CORRELATIONS = {"pearson", "spearmanr", "matthews_correlation"}


@functools.lru_cache(maxsize=64)
def _dev_labels(task: str, source: str, sizes: str, split: str) -> tuple:
    from ..data.glue import load_glue

    return tuple(load_glue(task, source, synthetic_sizes=json.loads(sizes) or None)[split]["label"])


def _labels(record: Mapping) -> tuple:
    task = record["task"]
    sizes = json.dumps(get(record, "config.synthetic_sizes") or {}, sort_keys=True)
    return _dev_labels(task, get(record, "config.data_source", "hub"), sizes, get_task(task).eval_splits[0])


def dev_size(record: Mapping) -> int:
    """Examples in the primary dev split the record's run was evaluated on (the data is loaded once)."""
    return len(_labels(record))


def majority_share(record: Mapping) -> float | None:
    """Percent of the primary dev split in its most frequent class (chance for accuracy); ``None`` for regression."""
    labels = _labels(record)
    if not labels or isinstance(labels[0], float):
        return None
    return 100.0 * max(labels.count(label) for label in set(labels)) / len(labels)


def standard_error(record: Mapping | None) -> float | None:
    """Standard error, in percentage points, of the record's selected main metric; ``None`` without one."""
    value = get(record, "selected.value") if record is not None else None
    if not is_number(value) or not math.isfinite(value):
        return None
    n = dev_size(record)
    if get_task(record["task"]).main_metric in _CORRELATIONS:
        return 100.0 * (1.0 - value ** 2) / math.sqrt(max(n - 3, 1))
    p = (value * n + 1.0) / (n + 2.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def separated(a: Mapping, b: Mapping) -> bool:
    """Whether two runs' main metrics differ by more than two standard errors of the difference."""
    se_a, se_b = standard_error(a), standard_error(b)
    if se_a is None or se_b is None:
        return False
    return abs(main_percent(a) - main_percent(b)) > 2.0 * math.hypot(se_a, se_b)


def noise_table(results_dir: Records, experiment: str) -> "Any":
    """Per task: the dev set's size, each method's main metric ± one standard error, and whether
    the best method is separated from each other one by more than two standard errors.

    Rows: tasks in the paper's order; columns: "Data", "Dev examples", "Majority class (%)" (what
    always answering the commonest label scores; "—" for regression), one "<method>" column
    ("56.9 ± 1.7") per method, and "Best, and the methods it is separated from".
    """
    import pandas as pd

    best = best_runs(glue_records(results_dir, experiment))
    methods = ordered_methods(method for _, method in best)
    rows = {}
    for task in ordered_tasks(task for task, _ in best):
        runs = {m: best[(task, m)] for m in methods if (task, m) in best}
        first = next(iter(runs.values()))
        majority = majority_share(first)
        row: dict[str, Any] = {"Data": get(first, "config.data_source", MISSING), "Dev examples": dev_size(first),
                               "Majority class (%)": MISSING if majority is None else f"{majority:.1f}"}
        for method in methods:
            record, se = runs.get(method), standard_error(runs.get(method))
            row[method_name(method)] = MISSING if se is None else f"{main_percent(record):.1f} ± {se:.1f}"
        scored = {m: r for m, r in runs.items() if standard_error(r) is not None}
        if scored:
            top = max(scored, key=lambda m: main_percent(scored[m]))
            beaten = [method_name(m) for m, r in scored.items() if m != top and separated(scored[top], r)]
            row["Best, and the methods it is separated from"] = (
                f"{method_name(top)}; " + (", ".join(beaten) if beaten else "none (within 2 SE of every other)"))
        rows[task_name(task)] = row
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(object)
    frame.index.name = "Task"
    frame.attrs["note"] = (f"{experiment}: main dev metric (percent) ± one standard error from the dev set's size "
                           "(accuracy: sqrt(p(1-p)/n), p = (k+1)/(n+2); correlation: (1-r²)/sqrt(n-3)); one seed, so seed-to-seed "
                           "variation comes on top. 'Separated': the gap exceeds two standard errors of the difference.")
    return frame
