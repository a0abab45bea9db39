"""Which small real subsets ship inside the package (``files/``), and where they are.

Only data sets whose licences permit redistribution are shipped (``files/README.md`` gives
each one's source, size and licence); every other task stays synthetic. The files keep
their original distribution formats, so ``source="bundled"`` is ``source="local"`` pointed
at this folder and goes through the same parsing code as a user's own copy.

The loaders (:mod:`pst.repro.data.glue`, :mod:`pst.repro.data.nlg`) import this module;
what is built from the subsets (:mod:`pst.repro.data.bundled`) sits above them.
"""
from __future__ import annotations

from pathlib import Path

FILES_DIR = Path(__file__).parent / "files"

#: GLUE tasks with a shipped subset (GLUE TSV layout under ``files/glue``).
GLUE_TASKS = ("qnli", "stsb")
#: NLG data sets with a shipped subset (their distribution files under ``files/<name>``).
NLG_DATASETS = ("e2e", "dart")
#: Why a data set is not shipped, for the error a request for it gets.
NOT_SHIPPED = {
    "webnlg": "WebNLG 2017 is licensed CC BY-NC-SA 4.0 (non-commercial), which this Apache-2.0 package cannot carry",
    "mnli": "MultiNLI permits redistribution, but no copy of its files small enough was available to us",
    "sst2": "SST-2 carries no licence that permits redistribution",
    "rte": "RTE carries no licence that permits redistribution",
    "cola": "CoLA carries no licence that permits redistribution",
    "mrpc": "MRPC's licence (Microsoft Research) does not permit redistribution",
    "qqp": "QQP is subject to Quora's terms, which do not permit redistribution",
}


def glue_dir(task: str) -> Path:
    """The folder ``load_glue(..., "local")`` reads for a shipped GLUE task."""
    _check(task, GLUE_TASKS, "GLUE task")
    return FILES_DIR / "glue"


def nlg_dir(name: str) -> Path:
    """The folder ``load_nlg(..., "local")`` reads for a shipped NLG data set."""
    _check(name, NLG_DATASETS, "NLG data set")
    return FILES_DIR / name


def _check(name: str, shipped: tuple[str, ...], what: str) -> None:
    if name not in shipped:
        why = NOT_SHIPPED.get(name, "it is not one of the shipped data sets")
        raise ValueError(f"no bundled data for {what} {name!r}: {why}; bundled: {list(shipped)}. "
                         "Use source='synthetic', or 'local'/'hub' with your own copy")
