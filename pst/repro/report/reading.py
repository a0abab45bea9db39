"""What a GLUE table lets a reader conclude, written from the records: the prose of notebooks 04 and 05.

Each sentence is rendered from the kept runs, so it cannot go stale against its table: per
task, the kind of data, the dev set's size and majority class, each method's value ± one
standard error, and whether the best method is separated from the others by more than two
standard errors (:mod:`.noise`); and where several methods' curves sit on the same value for
several evaluations, that the value is a plateau, not a learning curve.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..glue_tasks import get_task
from .columns import main_percent, method_name, ordered_methods, ordered_tasks, task_name
from .noise import dev_size, majority_share, separated, standard_error
from .records import Records, best_runs, get, glue_records, is_number

#: A value held at this many evaluations of a run is a plateau.
PLATEAU_EVALUATIONS = 3

_DATA = {"bundled": "real subset", "synthetic": "synthetic", "hub": "GLUE", "local": "GLUE (local files)"}


def _plateau(record: Mapping) -> int:
    """How many of the run's evaluations hold exactly its selected value."""
    task = get_task(record["task"])
    key = f"metrics.{task.eval_splits[0]}.{record.get('main_metric') or task.main_metric}"
    value = get(record, "selected.value")
    return sum(1 for e in record.get("evaluations") or () if is_number(value) and get(e, key) == value)


def _task_sentence(task: str, runs: dict[str, dict]) -> str:
    first = next(iter(runs.values()))
    n, majority = dev_size(first), majority_share(first)
    head = f"**{task_name(task)}** ({_DATA.get(get(first, 'config.data_source'), 'data')}, {n} dev examples"
    head += f"; majority class {majority:.1f}%)" if majority is not None else ")"
    values = ", ".join(f"{method_name(m)} {main_percent(r):.1f} ± {standard_error(r):.1f}" for m, r in runs.items()
                       if standard_error(r) is not None)
    scored = {m: r for m, r in runs.items() if standard_error(r) is not None}
    if not scored:
        return f"- {head}: no finite result."
    top = max(scored, key=lambda m: main_percent(scored[m]))
    beaten = [method_name(m) for m, r in scored.items() if m != top and separated(scored[top], r)]
    if len(beaten) == len(scored) - 1 and beaten:
        verdict = f"{method_name(top)} is ahead of every other method by more than two standard errors"
    elif beaten:
        verdict = (f"{method_name(top)} is ahead of {', '.join(beaten)} by more than two standard errors; "
                   "the others cannot be ranked")
    else:
        verdict = "Every gap is inside two standard errors: the methods cannot be ranked here"
    sentence = f"- {head}: {values}. {verdict}."
    below = [method_name(m) for m, r in scored.items()
             if majority is not None and main_percent(r) - majority <= 2 * standard_error(r)]
    if below:
        sentence += f" At the majority class (within two standard errors): {', '.join(below)}."
    held = {m: _plateau(r) for m, r in runs.items() if _plateau(r) >= PLATEAU_EVALUATIONS}
    if held:
        value = {round(main_percent(runs[m]), 1) for m in held}
        right = {round(main_percent(runs[m]) * n / 100) for m in held}
        sentence += (f" Plateau: the kept value of {', '.join(method_name(m) for m in held)} "
                     f"({', '.join(f'{v:.1f}' for v in sorted(value))}%, {' / '.join(str(r) for r in sorted(right))} of {n} "
                     f"right) is held at {' / '.join(str(c) for c in held.values())} of its evaluations: the run sat "
                     "on that solution, so read it as stalled, not as slow learning.")
    return sentence


def glue_reading(results_dir: Records, experiment: str) -> str:
    """Markdown: one sentence per task of ``experiment``'s table, from its kept runs (see module doc)."""
    best = best_runs(glue_records(results_dir, experiment))
    methods = ordered_methods(method for _, method in best)
    lines = [_task_sentence(task, {m: best[(task, m)] for m in methods if (task, m) in best})
             for task in ordered_tasks(task for task, _ in best)]
    return "\n".join(lines)


def ablation_reading(table: "Any") -> str:
    """One sentence on a single-task ablation table with a "± SE" column: whether its spread
    is larger than the dev sample alone can move two rows apart (two standard errors of a difference)."""
    import math

    from .ablations import SE_COLUMN

    if SE_COLUMN not in table.columns:
        return "Several tasks: read each column against its own noise."
    metric = [c for c in table.columns if c not in (SE_COLUMN, "Added parameters")][0]
    rows = [(label, v, se) for label, v, se in zip(table.index, table[metric], table[SE_COLUMN])
            if is_number(v) and is_number(se)]
    if len(rows) < 2:
        return "Fewer than two rows with a value: nothing to compare."
    (low, low_v, low_se), (high, high_v, high_se) = min(rows, key=lambda r: r[1]), max(rows, key=lambda r: r[1])
    bound = 2 * math.hypot(low_se, high_se)
    verdict = ("larger than that: the top and bottom rows differ by more than the dev sample alone explains (with "
               "one seed, seed-to-seed variation still may)" if high_v - low_v > bound else
               "inside that: no row of this table can be ranked above another")
    return (f"{metric}: from {low_v:.1f} ({low}) to {high_v:.1f} ({high}), a spread of {high_v - low_v:.1f} points; "
            f"two standard errors of their difference are {bound:.1f} points, and the spread is {verdict}.")
