"""Outputs of the importance-score analysis: how low-rank and structured learned scores are."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..results import record_path
from ..runstate import SCORES_SUFFIX, RunPaths
from .files import save_figure, save_table
from .records import ANALYSIS_EXPERIMENT, load

logger = logging.getLogger(__name__)


def score_structure_outputs(results_dir: str | os.PathLike, out_dir: str | os.PathLike, rank: int = 8,
                            experiment: str = ANALYSIS_EXPERIMENT, records: Iterable[dict] | None = None,
                            ) -> dict[str, list[Path]]:
    """Tables and figures of movement pruning's learned score structure, per analysis run.

    For every movement record of ``experiment`` whose ``.scores.safetensors`` side file exists:
    ``tables/score_structure_<task>`` (:func:`pst.repro.analysis.layer_structure_table`) and
    ``figures/score_spectra_<task>``, ``score_explained_share_<task>``, ``score_heatmaps_<task>``.
    ``records``: the folder's records when already read (:func:`read_results`).
    """
    from .. import analysis, analysis_figures

    out_dir, written = Path(out_dir), {}
    for record in load(results_dir if records is None else records, experiment):
        if record.get("method") != "movement":
            continue
        scores_file = RunPaths(record["run_id"], record_path(results_dir, record["run_id"])).side_file(SCORES_SUFFIX)
        if not scores_file.is_file():
            logger.info("analysis run %s has no score file (%s): skipped", record["run_id"], scores_file.name)
            continue
        suffix = f"_{record['task']}"
        outputs = {f"tables/score_structure{suffix}": [out_dir / "tables" / f"score_structure{suffix}{ext}"
                                                       for ext in (".md", ".tex", ".csv")]}
        outputs |= {f"figures/{name}{suffix}": [out_dir / "figures" / f"{name}{suffix}{ext}" for ext in (".png", ".pdf")]
                    for name in ("score_spectra", "score_explained_share", "score_heatmaps")}
        csv = out_dir / "tables" / f"score_structure{suffix}.csv"
        if _up_to_date([p for paths in outputs.values() for p in paths], scores_file) and _table_rank(csv) == rank:
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
    return written


def _table_rank(csv: Path) -> int | None:
    """The rank a saved score-structure table was computed with (its ``rank`` column)."""
    import pandas as pd

    ranks = set(pd.read_csv(csv)["rank"]) if csv.is_file() else set()
    return int(ranks.pop()) if len(ranks) == 1 else None


def _up_to_date(outputs: list[Path], source: Path) -> bool:
    """Every output exists and is at least as new as the file it was computed from."""
    source_time = source.stat().st_mtime
    return all(path.is_file() and path.stat().st_mtime >= source_time for path in outputs)
