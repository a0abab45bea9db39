"""Run one experiment of a plan: note its runs, refuse records of other code before any
training (unless told otherwise), then run this shard's runs, skipping those that are done."""
from __future__ import annotations

import logging
from collections.abc import Callable

from ..experiments import Experiment, record_membership
from ..runstate import SESSION_START, StaleRecordsError, action, run_paths, run_state, stale_message
from ..workspace import Workspace, shard_of
from .glue import run_glue
from .lifecycle import run_all
from .nlg import run_nlg

logger = logging.getLogger(__name__)


def _run_glue(config, workspace: Workspace, experiment: Experiment, force, stale_records: str) -> dict:
    return run_glue(config, workspace.results, workspace.work, force=force, save_scores=experiment.save_scores,
                    stale_records=stale_records)


def _run_nlg(config, workspace: Workspace, experiment: Experiment, force, stale_records: str) -> dict:
    if experiment.save_scores:
        raise ValueError(f"experiment {experiment.name}: NLG runs keep no score matrices (save_scores=True)")
    return run_nlg(config, workspace.results, workspace.work, force=force, stale_records=stale_records)


RUNNERS: dict[str, Callable[..., dict]] = {"glue": _run_glue, "nlg": _run_nlg}


def session_force(force: bool | float | None) -> bool | float:
    """``True`` in a notebook means "records finished before this session started": a run that
    several experiments share is then redone once, not once per experiment."""
    return SESSION_START if force is True else (force or False)


def run_experiment(experiment: Experiment, workspace: Workspace, shard: str | None = None,
                   force: bool | float = False, stale_records: str = "refuse") -> list[dict]:
    """Every run of ``experiment`` in ``shard``; returns their records.

    ``force``: ``True`` redoes the runs whose records were finished before this session
    started, a time (seconds since the epoch) those finished before it. ``stale_records``:
    what to do with records of other code; under "refuse" (the default) they stop the
    experiment before anything trains, with :class:`~pst.repro.runstate.StaleRecordsError`.
    """
    runs = shard_of(experiment.runs, shard)
    logger.info("%s: %d runs; this shard: %d", experiment.name, len(experiment.runs), len(runs))
    force = session_force(force)
    stale = {}
    for config in runs:
        state = run_state(run_paths(config, workspace.results, workspace.work), experiment.needs)
        if action(state, force, stale_records) == "refuse":
            stale[config.run_id] = state
    if stale:
        raise StaleRecordsError(stale_message(stale, f"experiment {experiment.name}"))
    record_membership(workspace.results, experiment)
    return run_all(runs, lambda config: RUNNERS[config.kind](config, workspace, experiment, force, stale_records),
                   experiment.name)
