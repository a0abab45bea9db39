"""The output folder of a reproduction: one layout shared by the notebooks, reproduce.py and tests.

    <out>/results/runs/<run_id>.json   one record per run (+ decoded outputs, score files)
    <out>/results/experiments/<experiment>/<run_id>.run   which experiments refer to a run
    <out>/work/models, <out>/work/checkpoints   tiny smoke models; checkpoints of unfinished runs
    <out>/tables/*.md|tex|csv, <out>/figures/*.png|pdf   built by the report from records only
    <out>/executed/*.ipynb   the notebooks as papermill ran them
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .results import in_shard, parse_shard

T = TypeVar("T")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, out_dir: str | Path) -> "Workspace":
        workspace = cls(Path(out_dir).resolve())
        for folder in (workspace.results, workspace.work, workspace.tables, workspace.figures):
            folder.mkdir(parents=True, exist_ok=True)
        return workspace

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def executed(self) -> Path:
        return self.root / "executed"


def shard_of(runs: Sequence[T], shard: str | None) -> list[T]:
    """The runs of shard ``"i/n"`` (0-based), or all runs when ``shard`` is None.

    A run's shard follows from its config (:func:`pst.repro.results.in_shard`), so the same
    run is in the same shard in every notebook that asks for it.
    """
    if shard is None:
        return list(runs)
    index, count = parse_shard(shard)
    return [run for run in runs if in_shard(dataclasses.asdict(run), index, count)]


def quiet_notebook_logging() -> None:
    """Keep executed notebooks readable: our progress bars and warnings, not every library's INFO."""
    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
