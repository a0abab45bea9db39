"""Executed notebooks made fit to commit: the smoke run's outputs, without the machine that ran them.

``reproduce.py --update-notebooks`` writes each executed smoke notebook back over its source,
so the notebooks read on GitHub with their tables and figures. Before that, this module drops
papermill's injected parameters cell and per-cell timings, turns the run's absolute paths
into relative ones, and stamps the notebook with a digest of its code cells. A test compares
that digest with the code cells as committed: edited code with old outputs fails it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping

import nbformat

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"
#: Notebook metadata written on update: ``{"pst": {"code_digest": ...}}``.
METADATA_KEY = "pst"
#: Absolute paths of a POSIX or Windows machine, as they would appear in an output.
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(?:root|home|tmp|work|Users|usr|opt|var|private)/|[A-Z]:\\\\)")
_TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")


def code_digest(notebook: nbformat.NotebookNode) -> str:
    """sha256 of the code cells' sources (the injected parameters cell excluded)."""
    sources = [cell.source for cell in notebook.cells
               if cell.cell_type == "code" and INJECTED_TAG not in cell.metadata.get("tags", [])]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:16]


def source_digest(notebook: nbformat.NotebookNode) -> str:
    """sha256 of every cell's type and source: what an execution depends on, not its outputs."""
    cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def _relative(text: str, replacements: Mapping[str, str]) -> str:
    for absolute, relative in replacements.items():
        text = text.replace(absolute, relative)
    return text


def for_commit(executed: nbformat.NotebookNode, replacements: Mapping[str, str]) -> nbformat.NotebookNode:
    """A copy of ``executed`` to commit as the notebook's source.

    ``replacements``: absolute path -> what to show instead (longest first is applied first),
    e.g. the output folder -> ``../out``.
    """
    notebook = copy.deepcopy(executed)
    ordered = dict(sorted(replacements.items(), key=lambda item: -len(item[0])))
    notebook.cells = [cell for cell in notebook.cells if INJECTED_TAG not in cell.metadata.get("tags", [])]
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "text" in output:
                output.text = _relative(output.text, ordered)
            for mime in _TEXT_MIMES:
                if mime in output.get("data", {}):
                    output.data[mime] = _relative(output.data[mime], ordered)
    notebook.metadata.pop("papermill", None)
    notebook.metadata[METADATA_KEY] = {"code_digest": code_digest(notebook)}
    return notebook


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """What keeps a notebook from being committed with its outputs: errors, absolute paths."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"cell {index}: error output {output.ename}: {output.evalue}")
            texts = [output.get("text", "")] + [output.get("data", {}).get(mime, "") for mime in _TEXT_MIMES]
            for text in texts:
                match = ABSOLUTE_PATH.search(text if isinstance(text, str) else "".join(text))
                if match:
                    found.append(f"cell {index}: absolute path {match.group(0)!r} in an output")
    return found
