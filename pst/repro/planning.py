"""What an invocation of ``reproduce.py`` will do with each planned run, decided the way the
runners decide (:func:`pst.repro.runstate.action`), before anything runs.

Notebooks run in order, so a run that an earlier notebook trains (or redoes) is done when a
later one asks for it: a run shared by several experiments is counted, and trained, once.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .experiments import Experiment
from .results import record_path
from .runstate import RunPaths, action, run_state
from .workspace import shard_of


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of one experiment of a notebook's plan, and what will happen to it.

    ``status``: the record's state (:class:`pst.repro.runstate.RunState`), or ``earlier``
    when an earlier experiment of the same invocation trains it. ``action``: ``reuse``,
    ``redo`` or ``refuse`` (a record of other code while records of other code are refused).
    """

    notebook: str
    experiment: str
    config: Any
    status: str
    action: str
    detail: str = ""

    @property
    def run_id(self) -> str:
        return self.config.run_id


def assess(plans: Mapping[str, Mapping[str, Experiment]], results_dir: Path | str, shard: str | None = None,
           force: bool | float = False, stale_records: str = "refuse") -> list[PlannedRun]:
    """Every run of every experiment of every notebook's plan (this shard's), in execution
    order, with its fate: what the runners will do, experiment after experiment."""
    produced: dict[str, tuple[str, ...]] = {}  # run id -> side files it has once trained in this invocation
    planned = []
    for notebook, experiments in plans.items():
        for experiment in experiments.values():
            for config in shard_of(experiment.runs, shard):
                run_id = config.run_id
                if run_id in produced and set(experiment.needs) <= set(produced[run_id]):
                    planned.append(PlannedRun(notebook, experiment.name, config, "earlier", "reuse"))
                    continue
                if run_id in produced:  # trained earlier in this invocation without a side file needed now
                    status, decision, detail = "incomplete", "redo", f"needs {list(experiment.needs)}"
                else:
                    state = run_state(RunPaths(run_id, record_path(results_dir, run_id)), experiment.needs)
                    status, decision, detail = state.status, action(state, force, stale_records), state.detail
                if decision == "redo":
                    produced[run_id] = experiment.needs
                planned.append(PlannedRun(notebook, experiment.name, config, status, decision, detail))
    return planned
