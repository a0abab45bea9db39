"""What the tables stand on: per experiment, how many of its runs have a usable record and
why the others are left out (no record yet, unreadable, made by other code)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .columns import frame
from .records import member_states

if TYPE_CHECKING:
    import pandas as pd

#: Columns of the status table, by run status.
STATUS_COLUMNS = {"done": "Done", "missing": "No record yet", "unreadable": "Unreadable",
                  "other-code": "Made by other code"}


def record_status_table(results_dir: str | os.PathLike, keep_stale: bool = False) -> "pd.DataFrame":
    """Rows: experiments; columns: "Runs" (that the experiment refers to), one count per status,
    and "In tables" (done, plus other code when ``keep_stale``)."""
    rows = {}
    for experiment, states in member_states(results_dir).items():
        counts = {label: sum(s.status == status for s in states.values()) for status, label in STATUS_COLUMNS.items()}
        used = counts["Done"] + (counts["Made by other code"] if keep_stale else 0)
        rows[experiment] = {"Runs": len(states), **counts, "In tables": used}
    note = ("Runs each experiment refers to (results/experiments/) and the state of their records. A run shared "
            "by several experiments has one record and counts in each. Unreadable records are moved aside and "
            "redone by the next run of their notebook; records made by other code are "
            + ("kept in the tables (--keep-stale-records)." if keep_stale else
               "left out of the tables: rerun them (--rerun-stale) or keep them (--keep-stale-records)."))
    return frame(rows, "Experiment", {}, note)
