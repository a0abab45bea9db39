"""Every table (Markdown, LaTeX, CSV) and figure (PNG, PDF) of the reproduction, from records only.

The report never trains and never remembers: each table is rebuilt from the JSON records
that the runners left under a results folder (:mod:`pst.repro.results`), plus two things computed
from the code itself (Table 1's criteria and the parameter counts, on meta-device models).
Paper values come from one data file, ``pst/repro/report/paper_results.json``, each with its source; a
cell with no sourced value shows "—" (the paper's numbers were not available to us).

Conventions:

* Grid search (:func:`best_runs`): per task and method the run with the best selection
  value wins: ``selected.value`` for GLUE (the task's main metric on the primary dev split,
  at the evaluation the runner selected), BLEU on the "all" subset for NLG. NaN never wins.
  Seeds are not averaged: a record with another seed is one more grid point.
* GLUE values are percentages with 1 decimal (accuracy, F1, Matthews and Pearson/Spearman
  correlation times 100). NLG values are shown in the units :mod:`pst.repro.metrics.nlg` records:
  BLEU, METEOR, ROUGE-L and TER in percent (1 decimal; TER: lower is better), NIST and CIDEr
  raw (2 decimals).
* A cell is "—" when there is no value: no run for it, a metric not measured (METEOR without
  Java), or no sourced paper value. ``NaN`` means a run measured NaN (e.g. Pearson of constant
  predictions).
* Every table function takes a results folder *or* an iterable of already loaded records, so
  :func:`build_report` reads the folder once.
* Curves (:mod:`.curves`) read the records' per-epoch ``evaluations`` (GLUE) and the
  ``training_log`` both runners keep (loss and sparsity ~20 times a run).
* Figures are :class:`matplotlib.figure.Figure` objects drawn with the Agg renderer (no
  pyplot, no global state, headless); the notebooks display them inline.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .ablations import rank_ablation_table, score_ablation_table, score_variant, sparsity_figure, sparsity_table
from .columns import GLUE_COLUMNS, METHOD_ORDER, MISSING, NLG_COLUMNS, method_name, method_style
from .counts import criteria_table, parameter_counts, parameter_counts_table
from .curves import MissingCurveError, glue_curves, training_loss_curves
from .files import display_frame, markdown_table, save_figure, save_table, show
from .examples import glue_examples
from .noise import dev_size, majority_share, noise_table, separated, standard_error
from .paper import PAPER_RESULTS_PATH, check_paper_results, paper_results, paper_value, published, published_table
from .reading import ablation_reading, glue_reading
from .records import (
    ABLATION_EXPERIMENTS,
    ANALYSIS_EXPERIMENT,
    GLUE_EXPERIMENTS,
    KNOWN_EXPERIMENTS,
    NLG_EXPERIMENT,
    best_runs,
    read_results,
    selection_value,
)
from .score_structure import score_reading, score_structure_outputs
from .status import record_status_table
from .tables import glue_table, nlg_table, selection_table

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def build_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, analysis: bool = True,
                 keep_stale: bool = False) -> dict[str, list[Path]]:
    """Every table and figure the records allow, under ``out_dir/tables`` and ``out_dir/figures``.

    Always writes ``criteria`` (Table 1), ``parameter_counts``, ``published_glue_bert`` (what
    another paper reports: APT's Table 7) and ``record_status`` (per
    experiment, its runs and what is left out; records of other code are used only when
    ``keep_stale``); then, for each experiment with records, its tables (``glue_bert``, ``glue_roberta``, ``nlg_gpt2`` with their
    ``*_selection`` grids (and ``*_noise``: standard errors, for GLUE), ``analysis_runs``, ``ablation_score``, ``ablation_rank``,
    ``ablation_sparsity``) and figures (``curves_glue_bert``, ``curves_glue_roberta``: dev metric
    against step; ``curves_nlg_gpt2``: training loss against step; ``ablation_sparsity``; the
    score-structure outputs of :func:`score_structure_outputs` when ``analysis``). Experiments
    without records are skipped with a logged note, and so is a curve whose kept runs lack the
    points (records made before the runners kept a training log). Returns
    ``{"tables/<name>" or "figures/<name>": paths}``.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    tables, figures = out_dir / "tables", out_dir / "figures"
    records = read_results(results_dir, keep_stale)
    present = {experiment for record in records for experiment in record["experiments"]}
    written: dict[str, list[Path]] = {}

    def table(name: str, frame: "pd.DataFrame") -> None:
        written[f"tables/{name}"] = save_table(frame, tables / name)

    table("criteria", criteria_table())
    table("parameter_counts", parameter_counts_table())
    table("record_status", record_status_table(results_dir, keep_stale))

    def figure(name: str, draw: Callable[[], "Figure"]) -> None:
        try:
            written[f"figures/{name}"] = save_figure(draw(), figures / name)
        except MissingCurveError as error:
            logger.warning("figure %s left out: %s", name, error)

    def skip(experiment: str) -> bool:
        if experiment not in present:
            logger.info("no records of experiment %r in %s yet: its tables are skipped", experiment, results_dir)
            return True
        return False

    for experiment, stem in GLUE_EXPERIMENTS.items():
        if published(experiment) is not None:
            table(f"published_{stem}", published_table(experiment))
        if not skip(experiment):
            table(stem, glue_table(records, experiment))
            table(f"{stem}_selection", selection_table(records, experiment))
            table(f"{stem}_noise", noise_table(records, experiment))
            figure(f"curves_{stem}", lambda experiment=experiment: glue_curves(records, experiment))
    if not skip(NLG_EXPERIMENT):
        table("nlg_gpt2", nlg_table(records))
        table("nlg_gpt2_selection", selection_table(records, NLG_EXPERIMENT))
        figure("curves_nlg_gpt2", lambda: training_loss_curves(records, NLG_EXPERIMENT))
    if not skip(ANALYSIS_EXPERIMENT):
        table("analysis_runs", glue_table(records, ANALYSIS_EXPERIMENT, paper=False))
        if analysis:
            written.update(score_structure_outputs(results_dir, out_dir, records=records))
    if not skip(ABLATION_EXPERIMENTS["score"]):
        table("ablation_score", score_ablation_table(records))
    if not skip(ABLATION_EXPERIMENTS["rank"]):
        table("ablation_rank", rank_ablation_table(records))
    if not skip(ABLATION_EXPERIMENTS["sparsity"]):
        table("ablation_sparsity", sparsity_table(records))
        figure("ablation_sparsity", lambda: sparsity_figure(records))
    unknown = sorted(present - set(KNOWN_EXPERIMENTS))
    if unknown:
        logger.info("records of experiment(s) %s are not part of the report", unknown)
    return written


__all__ = [
    "GLUE_COLUMNS", "METHOD_ORDER", "MISSING", "NLG_COLUMNS", "PAPER_RESULTS_PATH", "MissingCurveError",
    "best_runs", "build_report", "markdown_table", "show", "ablation_reading", "dev_size", "glue_examples", "glue_reading", "majority_share", "noise_table", "separated", "standard_error", "check_paper_results", "criteria_table", "display_frame", "glue_curves", "glue_table",
    "method_name", "method_style", "nlg_table", "paper_results", "paper_value", "parameter_counts",
    "parameter_counts_table", "published", "published_table", "read_results", "record_status_table",
    "rank_ablation_table", "save_figure", "save_table", "score_ablation_table", "score_reading", "score_structure_outputs",
    "score_variant", "selection_table", "selection_value", "sparsity_figure", "sparsity_table", "training_loss_curves",
]
