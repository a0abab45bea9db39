"""Whether a run is done, and what to do about it: one answer for the runners (skip or
redo), ``reproduce.py --dry-run`` (the plan) and the report (what the tables leave out).

A record counts as done only if it is readable, has the fields every record has, was made
by the current code (:mod:`pst.repro.fingerprint`) and has the side files the caller needs
(the analysis needs the score matrices). Light to import: no torch, no transformers.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .fingerprint import code_fingerprint
from .results import read_record, record_path

logger = logging.getLogger(__name__)

#: The learned score matrices of a run, beside its record (what the analysis notebook reads).
SCORES_SUFFIX = ".scores.safetensors"

#: What to do with a record made by other code: stop and say so, redo the run, or use it.
STALE_POLICIES = ("refuse", "rerun", "keep")

#: Every record has these; a GLUE record also ``selected``, an NLG record ``metrics``.
REQUIRED_FIELDS = ("run_id", "config", "code_fingerprint")
RESULT_FIELDS = ("selected", "metrics")

#: When this process started: ``force=True`` in an experiment redoes records finished before
#: it, so a run that several experiments share is redone once, not once per experiment.
SESSION_START = time.time()


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its record, its checkpoints and its side files."""

    run_id: str
    record: Path
    checkpoints: Path | None = None  # None where only the record matters (the report)

    def side_file(self, suffix: str) -> Path:
        """A file next to the record, e.g. decoded outputs or score matrices."""
        return self.record.with_name(self.record.name.removesuffix(".json") + suffix)

    def last_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(str(self.checkpoints)) if self.checkpoints and self.checkpoints.is_dir() else None


def run_paths(config: Any, results_dir: Path | str, work_dir: Path | str) -> RunPaths:
    return RunPaths(config.run_id, record_path(results_dir, config.run_id),
                    Path(work_dir) / "checkpoints" / config.run_id)


@dataclasses.dataclass(frozen=True)
class RunState:
    """What is on disk for one run.

    ``status``: ``missing`` (no record), ``unreadable`` (not JSON, or lacking fields: a run
    killed mid-write by a full disk, a hand edit), ``incomplete`` (a needed side file is
    missing), ``other-code`` (made by code with another fingerprint) or ``done``.
    """

    status: str
    detail: str = ""
    record: dict | None = None


def run_state(paths: RunPaths, needs: Collection[str] = ()) -> RunState:
    """Read and check the record of ``paths``; ``needs`` are side-file suffixes it must have."""
    if not paths.record.is_file():
        return RunState("missing")
    try:
        record = read_record(paths.record)
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        return RunState("unreadable", str(error))
    problem = record_problem(record, paths.run_id)
    if problem:
        return RunState("unreadable", f"record {paths.record} {problem}")
    absent = [suffix for suffix in needs if not paths.side_file(suffix).is_file()]
    if absent:
        return RunState("incomplete", f"lacks its side file(s) {absent}", record)
    if record["code_fingerprint"] != code_fingerprint():
        return RunState("other-code", f"made by code {record['code_fingerprint']}, current code is "
                                      f"{code_fingerprint()}", record)
    return RunState("done", record=record)


def record_problem(record: Any, run_id: str) -> str | None:
    """Why ``record`` is not a usable record of ``run_id``, or ``None``."""
    if not isinstance(record, dict):
        return f"holds a {type(record).__name__}, expected a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"lacks the field(s) {missing}"
    if not any(isinstance(record.get(name), dict) for name in RESULT_FIELDS):
        return f"has no results: neither of {list(RESULT_FIELDS)} is an object"
    if record["run_id"] != run_id:
        return f"belongs to run {record['run_id']!r}, not {run_id!r}"
    return None


def force_cutoff(force: bool | float | None) -> float | None:
    """Records finished before this time are redone: ``True`` means now, a number is a time
    (seconds since the epoch), ``False``/``None`` never."""
    if force is None or force is False:
        return None
    if force is True:
        return math.inf
    return float(force)


def action(state: RunState, force: bool | float | None = False, stale_records: str = "refuse") -> str:
    """``reuse`` the record, ``redo`` the run, or ``refuse`` (a record of other code under "refuse")."""
    if stale_records not in STALE_POLICIES:
        raise ValueError(f"stale_records={stale_records!r}; expected one of {list(STALE_POLICIES)}")
    cutoff = force_cutoff(force)
    if state.record is not None and cutoff is not None and state.record.get("finished_at", 0) < cutoff:
        return "redo"
    if state.status == "done":
        return "reuse"
    if state.status == "other-code":
        return {"keep": "reuse", "rerun": "redo", "refuse": "refuse"}[stale_records]
    return "redo"


def move_aside(path: Path) -> Path:
    """Rename an unreadable record to ``<name>.corrupt-<time>`` (kept for inspection, never read)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    os.replace(path, target)
    return target


class StaleRecordsError(RuntimeError):
    """Records made by other code were found where the policy is to refuse them."""


def stale_message(stale: dict[str, RunState], where: str) -> str:
    """What was found and the two ways on, for the error and for ``reproduce.py``."""
    example, state = next(iter(stale.items()))
    return (f"{len(stale)} record(s) of {where} were made by other code (e.g. {example}: {state.detail}). "
            "Rerun them (reproduce.py --rerun-stale, or stale_records='rerun' in a notebook; --force redoes "
            "every run) or keep them (reproduce.py --keep-stale-records, or stale_records='keep').")
