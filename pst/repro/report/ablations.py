"""The ablation tables (score components, ranks, sparsity) and the accuracy-against-sparsity figure."""
from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)
from ..glue_tasks import get_task
from ..profiles import SCORE_VARIANTS
from .columns import (
    AVERAGE_COLUMN,
    METRIC_NAMES,
    MISSING,
    average,
    frame,
    main_label,
    main_percent,
    method_name,
    method_style,
    ordered_methods,
    ordered_tasks,
)
from .files import panel_grid, save_figure
from .noise import standard_error
from .records import ABLATION_EXPERIMENTS, Records, best_runs, describe, get, glue_records, is_number


def score_variant(record: Mapping) -> str:
    """Which score S a PST record used, by :data:`pst.repro.profiles.SCORE_VARIANTS` name.

    Read from the record's ``pst_config`` switches (or the config's ``pst`` overrides on the
    defaults); a combination outside ``SCORE_VARIANTS`` is named by its terms.
    """

    switches = {"score_magnitude": True, "score_low_rank": True, "score_structured": True}
    source = record.get("pst_config")
    if not isinstance(source, Mapping):
        source = get(record, "config.pst", {})
    switches.update({k: bool(v) for k, v in (source or {}).items() if k in switches})
    for name, overrides in SCORE_VARIANTS.items():
        if switches == {**{k: True for k in switches}, **overrides}:
            return name
    terms = [t for t, on in zip(("|W'|", "AB", "R + C"), switches.values()) if on]
    return " + ".join(terms)


def _ranks(record: Mapping) -> tuple[int, int]:
    def rank(key: str) -> int:
        value = get(record, f"pst_config.{key}", get(record, f"config.pst.{key}", 8))
        return int(value)

    return rank("weight_rank"), rank("score_rank")


SE_COLUMN = "± SE"


def _main_metric_rows(best: Mapping[tuple, dict], row_keys: Sequence, labels: Mapping, tasks: Sequence[str],
                      ) -> dict[str, dict]:
    """One row per key: each task's main metric; with one task its standard error ("± SE"),
    with several their average (one number per task adds nothing to a single task)."""
    rows = {}
    for key in row_keys:
        values = {main_label(task): main_percent(best.get((task, key))) for task in tasks}
        if len(tasks) == 1:
            se = standard_error(best.get((tasks[0], key)))
            rows[labels[key]] = {**values, SE_COLUMN: MISSING if se is None else se}
        else:
            rows[labels[key]] = {**values, AVERAGE_COLUMN: average(list(values.values()))}
    return rows


_SE_NOTE = (" '± SE': one standard error from the dev set's size (pst.repro.report.noise); rows closer than about "
            "two of them cannot be told apart.")


def score_ablation_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["score"]) -> "pd.DataFrame":
    """PST with parts of its score S removed: rows score variants, columns tasks' main metric (%).

    Rows in :data:`pst.repro.profiles.SCORE_VARIANTS` order (the last, ``|W'| + AB + R + C``, is the
    paper's PST); columns the tasks present (main metric on the primary dev split, percent)
    and "Avg (main metrics)".
    """
    records = glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {describe(results_dir)}")
    best = best_runs(records, by=("task", score_variant))
    variants = {variant for _, variant in best}

    order = [v for v in SCORE_VARIANTS if v in variants] + sorted(variants - set(SCORE_VARIANTS))
    tasks = ordered_tasks(task for task, _ in best)
    rows = _main_metric_rows(best, order, {v: v for v in order}, tasks)
    decimals = {c: 1 for c in (*(main_label(t) for t in tasks), AVERAGE_COLUMN, SE_COLUMN)}
    note = (f"{experiment}: PST on BERT with score S = |W'| + AB + R + C or parts of it; dev main metric in percent, "
            f"best run per task and variant.{_SE_NOTE if len(tasks) == 1 else ''}")
    return frame(rows, "Score S", decimals, note)


def rank_ablation_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["rank"]) -> "pd.DataFrame":
    """PST with other ranks: rows (r1, r2), columns tasks' main metric (%) and the added parameters.

    r1 is the weight update's rank (U: n x r1, V: r1 x k), r2 the score's (A, B). Rows sorted by
    (r1, r2); "Added parameters" is what the method adds to the model of those runs.
    """
    records = glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {describe(results_dir)}")
    best = best_runs(records, by=("task", _ranks))
    pairs = sorted({pair for _, pair in best})
    tasks = ordered_tasks(task for task, _ in best)
    labels = {pair: f"r1={pair[0]}, r2={pair[1]}" for pair in pairs}
    rows = _main_metric_rows(best, pairs, labels, tasks)
    for pair in pairs:
        added = [get(r, "trainable_parameters.added") for (t, p), r in best.items() if p == pair]
        added = [a for a in added if is_number(a)]
        rows[labels[pair]]["Added parameters"] = int(max(added)) if added else MISSING
    decimals = {c: 1 for c in (*(main_label(t) for t in tasks), AVERAGE_COLUMN, SE_COLUMN)}
    note = (f"{experiment}: PST on BERT; r1 = rank of the weight update UV, r2 = rank of the score term AB "
            f"(the paper uses r1 = r2 = 8). Dev main metric in percent.{_SE_NOTE if len(tasks) == 1 else ''}")
    return frame(rows, "Ranks (r1 update, r2 score)", decimals, note)


def _sparsity_best(results_dir: Records, experiment: str) -> dict[tuple, dict]:
    records = glue_records(results_dir, experiment)
    if not records:
        raise ValueError(f"no records of experiment {experiment!r} in {describe(results_dir)}")
    return best_runs(records, by=("task", "method", "config.sparsity"))


def sparsity_table(results_dir: Records, experiment: str = ABLATION_EXPERIMENTS["sparsity"]) -> "pd.DataFrame":
    """Main metric against target sparsity: rows sparsities, columns task x method (percent).

    Columns are "<task (metric)> <method>", task-major in the paper's task order, methods in
    the order PST, MaP, MvP.
    """
    best = _sparsity_best(results_dir, experiment)
    tasks = ordered_tasks(task for task, _, _ in best)
    methods = ordered_methods(method for _, method, _ in best)
    sparsities = sorted({s for _, _, s in best if is_number(s)})
    rows = {}
    for sparsity in sparsities:
        rows[f"{100 * sparsity:g}%"] = {
            f"{main_label(task)} {method_name(method)}": main_percent(best.get((task, method, sparsity)))
            for task in tasks for method in methods
        }
    columns = [f"{main_label(t)} {method_name(m)}" for t in tasks for m in methods]
    note = f"{experiment}: dev main metric (percent) of the best run per task, method and target sparsity."
    return frame(rows, "Target sparsity", {c: 1 for c in columns}, note)


def sparsity_figure(results_dir: Records, path_stem: str | os.PathLike | None = None,
                    experiment: str = ABLATION_EXPERIMENTS["sparsity"]) -> "Figure":
    """Main dev metric against target sparsity: one panel per task, one line per method.

    Saved as ``<path_stem>.png`` and ``.pdf`` when ``path_stem`` is given; always returned.
    """
    best = _sparsity_best(results_dir, experiment)
    tasks = ordered_tasks(task for task, _, _ in best)
    methods = ordered_methods(method for _, method, _ in best)
    models = sorted({str(get(r, "config.model", r.get("model_name", "?"))) for r in best.values()})
    figure, axes = panel_grid(len(tasks), 3.6, 3.0, extra_height=0.8)
    for ax, task in zip(axes, tasks):
        main = get_task(task).main_metric
        metric = METRIC_NAMES.get(main, main)
        for method in methods:
            runs = sorted((s, r) for (t, m, s), r in best.items() if t == task and m == method and is_number(s))
            points = [(100 * s, main_percent(r), standard_error(r)) for s, r in runs if is_number(main_percent(r))]
            if points:
                xs, ys, ses = zip(*points)
                ax.errorbar(xs, ys, yerr=[2 * (se or 0.0) for se in ses], label=method_name(method), linewidth=1.5,
                            markersize=5, capsize=3, **method_style(method))
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 100.0)  # the whole scale: a few dev examples stay a few points
        ax.set_title(f"{main_label(task)}", fontsize=10)
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel(f"dev {metric} (%)")
        ax.grid(True, linewidth=0.4, alpha=0.5)
    if tasks:
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(methods),
                      fontsize=8, frameon=False)
    text = f"Dev metric against sparsity (model: {', '.join(models)}); bars: ± 2 standard errors of the dev set"
    figure.suptitle(textwrap.fill(text, width=int(11 * figure.get_figwidth())), fontsize=10)  # ~11 characters an inch
    if path_stem is not None:
        save_figure(figure, path_stem)
    return figure
