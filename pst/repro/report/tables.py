"""The main result tables: GLUE (BERT, RoBERTa), GPT-2 generation, and what each grid search chose."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
from .columns import (
    AVERAGE_COLUMN,
    GLUE_COLUMNS,
    GLUE_ORDER,
    MISSING,
    NLG_COLUMNS,
    NLG_DATASETS,
    SPARSITY_COLUMN,
    average,
    column_value,
    frame,
    main_percent,
    method_name,
    ordered_methods,
    ordered_tasks,
    sparsity_percent,
    task_name,
    task_sort_key,
)
from .paper import PAPER_SUFFIX, paper_row, published_rows
from .records import (
    NLG_EXPERIMENT,
    Records,
    best_runs,
    describe,
    get,
    glue_records,
    group_sizes,
    is_number,
    load,
    nlg_records,
    selection_value,
)


def glue_table(results_dir: Records, experiment: str, paper: bool = True) -> "pd.DataFrame":
    """Our GLUE dev results (best of the grid) per method, each followed by the published rows.

    Rows: methods in the order PST, MaP, MvP, Dense fine-tuning, LoRA (those with records). When
    ``paper``, each is followed by what another paper reports for it (APT's Table 7 for
    BERT-base, named in the row label) or else by "<method> (paper)", the PST paper's own
    values ("—" where none is recorded). Columns: "Sparsity (%)" (mean measured sparsity of the
    selected runs), then the GLUE columns of the tasks present in the paper's order (MNLI-m/mm,
    QQP acc/F1, QNLI, SST-2, CoLA, STS-B Pearson/Spearman, MRPC acc/F1, RTE), then
    "Avg (main metrics)": the mean over tasks of each task's main metric, for rows that have
    every task of the table, and only when all of them ran on one kind of data (never an
    average over synthetic and real tasks); the column is left out when no row has one.
    Values in percent, 1 decimal.
    """
    records = glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no GLUE records of experiment {experiment!r} in {describe(results_dir)}")
    best = best_runs(records)
    tasks = ordered_tasks(task for task, _ in best)
    columns = [c for c in GLUE_COLUMNS if c.task in tasks]
    sources = {get(record, "config.data_source") for record in best.values()}
    rows: dict[str, dict] = {}
    for method in ordered_methods(method for _, method in best):
        chosen = {task: best.get((task, method)) for task in tasks}
        row: dict[str, Any] = {SPARSITY_COLUMN: sparsity_percent([r for r in chosen.values() if r is not None])}
        row.update({c.label: column_value(chosen[c.task], c, nlg=False) for c in columns})
        row[AVERAGE_COLUMN] = average([main_percent(chosen[task]) for task in tasks]) if len(sources) == 1 else MISSING
        rows[method_name(method)] = row
        if paper:
            extra = (SPARSITY_COLUMN, AVERAGE_COLUMN)
            published = published_rows(experiment, method, columns, extra, all_tasks=len(tasks) == len(GLUE_ORDER))
            rows.update(published or {method_name(method) + PAPER_SUFFIX: paper_row(experiment, method, columns, extra)})
    decimals = {label: 1 for label in (SPARSITY_COLUMN, AVERAGE_COLUMN, *(c.label for c in columns))}
    averaged = len(sources) == 1 or any(is_number(row.get(AVERAGE_COLUMN)) for row in rows.values())
    average_note = (f"'{AVERAGE_COLUMN}': mean of MNLI-m acc, QQP F1, QNLI/SST-2/RTE acc, CoLA MCC, STS-B Pearson, "
                    "MRPC F1 over the tasks shown. " if averaged else
                    "No average: the tasks mix synthetic and real data. ")
    note = (f"{experiment}: GLUE dev sets, best run of the grid per task and method (selected by the task's "
            "main metric on the primary dev split, among evaluations at the target sparsity). Percent. "
            + average_note +
            "Rows 'reported by ...' are another paper's runs, one number per task, shown in the column of "
            f"the task's main metric. '{MISSING}': no run, or no sourced value.")
    table = frame(rows, "Method", decimals, note)
    if AVERAGE_COLUMN in table.columns and (table[AVERAGE_COLUMN] == MISSING).all():
        table = table.drop(columns=AVERAGE_COLUMN)
    return table


def nlg_table(results_dir: Records, experiment: str = NLG_EXPERIMENT, paper: bool = True) -> "pd.DataFrame":
    """Our GPT-2 generation results per method, each followed by the paper's row.

    Rows as in :func:`glue_table`. Columns: "Sparsity (%)", then dataset x metric for what
    the records hold: E2E BLEU, NIST, METEOR, ROUGE-L, CIDEr; DART BLEU, METEOR, TER;
    WebNLG BLEU, METEOR, TER each on the seen, unseen and all subsets. BLEU, METEOR, ROUGE-L
    and TER in percent (TER: lower is better), NIST and CIDEr raw.
    """
    records = nlg_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no NLG records of experiment {experiment!r} in {describe(results_dir)}")
    best = best_runs(records)
    present = {(task, subset, metric) for (task, _), record in best.items()
               for subset, scores in record["metrics"].items() if isinstance(scores, Mapping)
               for metric in scores}
    columns = [c for c in NLG_COLUMNS if (c.task, c.split, c.metric) in present]
    unmeasured = False
    rows: dict[str, dict] = {}
    for method in ordered_methods(method for _, method in best):
        chosen = {task: best.get((task, method)) for task in NLG_DATASETS}
        row: dict[str, Any] = {SPARSITY_COLUMN: sparsity_percent([r for r in chosen.values() if r is not None])}
        for column in columns:
            record = chosen[column.task]
            row[column.label] = column_value(record, column, nlg=True)
            scores = get(record, f"metrics.{column.split}") if record is not None else None
            unmeasured |= isinstance(scores, Mapping) and column.metric in scores and scores[column.metric] is None
        rows[method_name(method)] = row
        if paper:
            rows[method_name(method) + PAPER_SUFFIX] = paper_row(experiment, method, columns, (SPARSITY_COLUMN,))
    decimals = {SPARSITY_COLUMN: 1, **{c.label: c.decimals for c in columns}}
    note = (f"{experiment}: test sets (or the records' eval split), one run per dataset and method (best BLEU on "
            "'all' when there are several). BLEU, METEOR, ROUGE-L, TER in percent (TER: lower is better); NIST, "
            f"CIDEr raw. '{MISSING}': no run, or no sourced paper value.")
    if unmeasured:
        note += f" Some METEOR cells are '{MISSING}' because Java was missing when the run was scored."
    return frame(rows, "Method", decimals, note)


def selection_table(results_dir: Records, experiment: str) -> "pd.DataFrame":
    """What the grid search chose, per task and method: the settings and the value that won.

    Columns: Task, Method, Learning rate, Epochs, Runs in grid, Selected epoch, Selection metric,
    Selection value (GLUE in percent, NLG BLEU as recorded), Target sparsity reached.
    """
    records = load(results_dir, experiment)
    records = [r for r in records if isinstance(r.get("selected"), Mapping) or isinstance(r.get("metrics"), Mapping)]
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {describe(results_dir)}")
    best = best_runs(records)
    sizes = group_sizes(records, ("task", "method"))
    methods = {m: i for i, m in enumerate(ordered_methods(m for _, m in best))}
    rows = []
    for (task, method), record in sorted(best.items(), key=lambda kv: (task_sort_key(kv[0][0]), methods[kv[0][1]])):
        glue = isinstance(record.get("selected"), Mapping)
        value = selection_value(record)
        rows.append({
            "Task": task_name(task),
            "Method": method_name(method),
            "Learning rate": get(record, "config.learning_rate", MISSING),
            "Epochs": get(record, "config.epochs", MISSING),
            "Runs in grid": sizes[(task, method)],
            "Selected epoch": get(record, "selected.epoch", MISSING) if glue else MISSING,
            "Selection metric": get(record, "selected.metric", MISSING) if glue else "BLEU (all)",
            "Selection value": (100.0 * value if glue else value) if math.isfinite(value) else math.nan,
            "Target sparsity reached": get(record, "selected.target_reached", MISSING) if glue else MISSING,
        })
    import pandas as pd

    frame = pd.DataFrame(rows).astype(object)
    frame.attrs["decimals"] = {"Selection value": 1, "Selected epoch": 0}
    frame.attrs["note"] = f"{experiment}: the run kept for each task and method, and the size of its grid."
    return frame
