"""Outputs of the importance-score analysis: how low-rank and structured movement pruning's
learned scores are, and what PST's own score learns (:mod:`pst.repro.analysis_pst`).

Both are computed from the analysis runs' score files, which are large; an output at least as
new as the files it came from (and made with the same settings) is not computed again, so the
notebook and the report share the work.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..results import record_path
from ..runstate import SCORES_SUFFIX, RunPaths
from .columns import task_name
from .files import save_figure, save_table
from .records import ANALYSIS_EXPERIMENT, best_runs, get, load

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".md", ".tex", ".csv")
FIGURE_SUFFIXES = (".png", ".pdf")


def score_structure_outputs(results_dir: str | os.PathLike, out_dir: str | os.PathLike, rank: int = 8,
                            experiment: str = ANALYSIS_EXPERIMENT, records: Iterable[dict] | None = None,
                            ) -> dict[str, list[Path]]:
    """Tables and figures of the learned scores of ``experiment``'s runs, movement's and PST's.

    For every movement record whose ``.scores.safetensors`` side file exists:
    ``tables/score_structure_<task>`` (:func:`pst.repro.analysis.layer_structure_table`) and
    ``figures/score_spectra_<task>``, ``score_explained_share_<task>``, ``score_heatmaps_<task>``;
    then the PST outputs of :func:`pst_score_terms_outputs`.
    ``records``: the folder's records when already read (:func:`read_results`).
    """
    from .. import analysis, analysis_figures

    out_dir, written = Path(out_dir), {}
    records = load(results_dir if records is None else records, experiment)
    for record in records:
        if record.get("method") != "movement" or (scores_file := _scores_file(results_dir, record)) is None:
            continue
        suffix = f"_{record['task']}"
        outputs = {f"tables/score_structure{suffix}": _paths(out_dir, "tables", f"score_structure{suffix}")}
        outputs |= {f"figures/{name}{suffix}": _paths(out_dir, "figures", f"{name}{suffix}")
                    for name in ("score_spectra", "score_explained_share", "score_heatmaps")}
        csv = out_dir / "tables" / f"score_structure{suffix}.csv"
        if _up_to_date(outputs, [scores_file]) and _table_rank(csv) == rank:
            # Notebook 02 and the report both ask for these; the SVDs run once per score file and rank.
            written.update(outputs)
            continue
        layers = analysis.load_scores(scores_file)
        scores = {name: parts["scores"] for name, parts in layers.items() if "scores" in parts}
        if not scores:
            logger.info("score file %s holds no movement scores: skipped", scores_file.name)
            continue
        table = analysis.layer_structure_table(scores, rank=rank)
        table.attrs["decimals"] = {c: 3 for c in table.columns if table[c].dtype.kind == "f"}
        table.attrs["note"] = (f"Movement pruning's learned scores ({record['run_id']}): share of ||S - mean||_F^2 "
                               f"explained by row/column effects, rank {rank}, and both; shuffled S as a baseline.")
        written[f"tables/score_structure{suffix}"] = save_table(table, out_dir / "tables" / f"score_structure{suffix}")
        for name, figure in (("score_spectra", analysis_figures.spectrum_figure(scores, rank=rank)),
                             ("score_explained_share", analysis_figures.explained_share_figure(table)),
                             ("score_heatmaps", analysis_figures.heatmap_figure(dict(list(scores.items())[:3]), rank=rank))):
            written[f"figures/{name}{suffix}"] = save_figure(figure, out_dir / "figures" / f"{name}{suffix}")
    return written | pst_score_terms_outputs(results_dir, out_dir, experiment, records)


def pst_score_terms_outputs(results_dir: str | os.PathLike, out_dir: str | os.PathLike,
                            experiment: str = ANALYSIS_EXPERIMENT, records: Iterable[dict] | None = None,
                            ) -> dict[str, list[Path]]:
    """``tables/pst_score_terms_<task>`` and ``figures/pst_score_terms_<task>`` per task with a PST run.

    Per layer of the PST run (the grid's best per task) whose score file exists: the share of S
    each term carries, the share of kept weights magnitude pruning would prune
    (:func:`pst.repro.analysis_pst.pst_layer_table`) and, when a movement run of the same task
    and model has a score file, the rank correlations with its learned score. A score file
    written before PST runs saved W, U and V is skipped with a warning.
    """
    from .. import analysis, analysis_pst

    out_dir, written = Path(out_dir), {}
    records = [r for r in load(results_dir if records is None else records, experiment)
               if _scores_file(results_dir, r, quiet=r.get("method") != "pst") is not None]
    best = best_runs(records, by=("task", "method", "config.model"))
    for (task, method, model), record in best.items():
        if method != "pst":
            continue
        pst_file = _scores_file(results_dir, record)
        partner = best.get((task, "movement", model))
        movement_file = _scores_file(results_dir, partner) if partner is not None else None
        name = f"pst_score_terms_{task}"
        outputs = {f"tables/{name}": _paths(out_dir, "tables", name), f"figures/{name}": _paths(out_dir, "figures", name)}
        sources = [pst_file] + ([movement_file] if movement_file else [])
        if _up_to_date(outputs, sources) and _has_correlations(outputs[f"tables/{name}"][-1]) == bool(movement_file):
            written.update(outputs)
            continue
        config = record.get("pst_config") or {}
        try:
            table = analysis_pst.pst_layer_table(
                analysis.load_scores(pst_file), analysis.load_scores(movement_file) if movement_file else None,
                alpha1=config.get("alpha1", 1.0), alpha2=config.get("alpha2", 1.0), beta=config.get("beta", 1.0),
                magnitude=config.get("score_magnitude", True), pattern=config.get("pattern", "unstructured"))
        except analysis_pst.IncompleteScoreFile as error:
            logger.warning("analysis run %s: %s; its PST score analysis is skipped", record["run_id"], error)
            continue
        table.attrs["decimals"] = {c: 3 for c in table.columns if table[c].dtype.kind == "f"}
        table.attrs["note"] = _pst_note(record, partner if movement_file else None)
        written[f"tables/{name}"] = save_table(table, out_dir / "tables" / name)
        sparsity = get(record, "config.sparsity")
        title = (f"PST's learned score, {task_name(task)} ({get(record, 'config.model', '?')}, "
                 f"sparsity {get(record, 'mean_sparsity') or 0:.0%})")
        figure = analysis_pst.pst_terms_figure(table, title, sparsity=sparsity)
        written[f"figures/{name}"] = save_figure(figure, out_dir / "figures" / name)
    return written


def _pst_note(record: dict, partner: dict | None) -> str:
    note = (f"PST's score S = |W'| + a1 AB + a2 (R1^T + 1C^T) ({record['run_id']}): share_* = share of "
            "||S - mean||_F^2 each term carries on its own (share_covariance: the cross terms; the shares sum to 1); "
            "kept_outside_map_w / _w_updated = share of the weights PST keeps that magnitude pruning of the "
            "pre-trained W / of W' at the same sparsity would prune (0 at step 0).")
    if partner is not None:
        note += (f" spearman_pst_mvp = rank correlation of PST's a1 AB + a2 (R1^T + 1C^T) with movement pruning's "
                 f"learned score ({partner['run_id']}); spearman_mvp_abs_w = that score against |W|, the reference.")
    return note


def _scores_file(results_dir: str | os.PathLike, record: dict, quiet: bool = False) -> Path | None:
    """The run's score file, or ``None`` (noted in the log) when it has none."""
    path = RunPaths(record["run_id"], record_path(results_dir, record["run_id"])).side_file(SCORES_SUFFIX)
    if path.is_file():
        return path
    if not quiet:
        logger.info("analysis run %s has no score file (%s): skipped", record["run_id"], path.name)
    return None


def _paths(out_dir: Path, kind: str, name: str) -> list[Path]:
    return [out_dir / kind / f"{name}{ext}" for ext in (TABLE_SUFFIXES if kind == "tables" else FIGURE_SUFFIXES)]


def _table_rank(csv: Path) -> int | None:
    """The rank a saved score-structure table was computed with (its ``rank`` column)."""
    import pandas as pd

    ranks = set(pd.read_csv(csv)["rank"]) if csv.is_file() else set()
    return int(ranks.pop()) if len(ranks) == 1 else None


def _has_correlations(csv: Path) -> bool:
    """Whether a saved PST score-terms table compared with a movement run."""
    import pandas as pd

    return csv.is_file() and "spearman_pst_mvp" in pd.read_csv(csv, nrows=0).columns


def _up_to_date(outputs: dict[str, list[Path]], sources: Sequence[Path]) -> bool:
    """Every output exists and is at least as new as every file it was computed from."""
    newest = max(source.stat().st_mtime for source in sources)
    return all(path.is_file() and path.stat().st_mtime >= newest for paths in outputs.values() for path in paths)


def score_reading(out_dir: str | os.PathLike, task: str, sparsity: float) -> str:
    """Markdown: what the score-structure tables of ``task`` say, in numbers read from them.

    Means over layers; the shuffled and i.i.d. baselines beside each share; the share of PST's
    kept weights that magnitude pruning would remove beside ``sparsity``, which is what a
    random mask gives (a random kept weight falls among MaP's pruned ones with probability p).
    """
    import pandas as pd

    tables = Path(out_dir) / "tables"
    movement = pd.read_csv(tables / f"score_structure_{task}.csv").mean(numeric_only=True)
    lines = [f"- **Movement's score** (means over {len(pd.read_csv(tables / f'score_structure_{task}.csv'))} layers): "
             f"rank {int(movement['rank'])} plus row/column effects explain {movement['both']:.1%} of its energy, "
             f"the same values shuffled {movement['shuffled_both']:.1%}, and rank {int(movement['rank'])} explains "
             f"{movement['iid_low_rank']:.1%} of i.i.d. noise of these shapes; row/column effects alone "
             f"{movement['row_col']:.1%} against {movement['shuffled_row_col']:.1%} shuffled."]
    terms_csv = tables / f"pst_score_terms_{task}.csv"
    if terms_csv.is_file():
        pst = pd.read_csv(terms_csv).mean(numeric_only=True)
        lines.append(f"- **PST's score**: $|W'|$ carries {pst['share_magnitude']:.1%} of its energy, $AB$ "
                     f"{pst['share_low_rank']:.1%}, $R+C$ {pst['share_structured']:.1%} (cross terms "
                     f"{pst['share_covariance']:.1%}).")
        lines.append(f"- **PST's mask against magnitude pruning**: of the weights PST keeps, {pst['kept_outside_map_w']:.1%} "
                     f"would be pruned by magnitude pruning of $W$ and {pst['kept_outside_map_w_updated']:.1%} by "
                     f"magnitude pruning of $W'$; a random mask at this sparsity gives {sparsity:.1%} (chance).")
        if "spearman_pst_mvp" in pst:
            lines.append(f"- **PST's data-driven score against movement's**: Spearman {pst['spearman_pst_mvp']:.2f} on average "
                         f"({pd.read_csv(terms_csv)['spearman_pst_mvp'].min():.2f} to "
                         f"{pd.read_csv(terms_csv)['spearman_pst_mvp'].max():.2f} over the layers); $|W|$ against "
                         f"movement's score {pst['spearman_mvp_abs_w']:.2f}.")
    return "\n".join(lines)
