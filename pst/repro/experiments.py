"""Experiments: named sets of runs whose records one table reads.

A record is keyed by its run's config alone (:attr:`GlueRunConfig.run_id`), so a run that
several experiments ask for (PST at 90% in glue-bert and in every ablation) trains once.
Which experiments refer to a run is kept beside the records, one small file per pair:

    <results>/experiments/<experiment>/<run_id>.run    {"kind": "glue", "config": {...}}

Written before the runs train, for the whole experiment (every shard), so the report
knows which records an experiment still lacks; files never conflict, so results folders
gathered from several machines merge by copying them together.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .results import canonical_json, check_name
from .runstate import SCORES_SUFFIX

MEMBERS_FOLDER = "experiments"
MEMBER_SUFFIX = ".run"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named set of runs (one table's, or one notebook section's)."""

    name: str
    runs: tuple[Any, ...]  # GlueRunConfig / NlgRunConfig
    save_scores: bool = False  # the runs also keep their learned score matrices (the analysis reads them)

    def __post_init__(self) -> None:
        check_name(self.name, "experiment name")
        object.__setattr__(self, "runs", tuple(self.runs))

    @property
    def needs(self) -> tuple[str, ...]:
        """Side files each record must have to count as done (:func:`pst.repro.runstate.run_state`)."""
        return (SCORES_SUFFIX,) if self.save_scores else ()


def member_path(results_dir: Path | str, experiment: str, run_id: str) -> Path:
    return Path(results_dir) / MEMBERS_FOLDER / check_name(experiment, "experiment name") / f"{run_id}{MEMBER_SUFFIX}"


def record_membership(results_dir: Path | str, experiment: Experiment) -> None:
    """Note that every run of ``experiment`` belongs to it (files already there are left alone)."""
    for config in experiment.runs:
        path = member_path(results_dir, experiment.name, config.run_id)
        if not path.is_file():
            write_text_atomic(path, canonical_json({"kind": config.kind, "config": dataclasses.asdict(config)}) + "\n")


def memberships(results_dir: Path | str) -> dict[str, list[str]]:
    """``{experiment: sorted run ids}`` from the membership files under ``results_dir``."""
    folder = Path(results_dir) / MEMBERS_FOLDER
    if not folder.is_dir():
        return {}
    return {entry.name: sorted(p.name.removesuffix(MEMBER_SUFFIX) for p in entry.glob(f"*{MEMBER_SUFFIX}"))
            for entry in sorted(folder.iterdir()) if entry.is_dir()}


def distinct_runs(experiments: Sequence[Experiment]) -> dict[str, Any]:
    """``{run_id: config}`` over several experiments: a shared run counts once."""
    return {config.run_id: config for experiment in experiments for config in experiment.runs}
