"""Executed notebooks made fit to commit: the smoke run's outputs, without the machine that ran them.

``reproduce.py --update-notebooks`` writes each executed smoke notebook back over its source,
so the notebooks read on GitHub with their tables and figures. Before that, this module drops
papermill's injected parameters cell and per-cell timings, turns the run's absolute paths
into relative ones, and stamps the notebook with a digest of its code cells. A test compares
that digest with the code cells as committed: edited code with old outputs fails it.

The prose must follow the outputs: :func:`unsupported_numbers` finds every number a markdown
cell states as a result (a decimal, a percentage, a count with thousands separators) that no
output and no code cell of the notebook holds, so a sentence that has gone stale against its
table cannot be committed. Numbers that depend on a run are best not written in markdown at
all but rendered from the records in a code cell (``display(Markdown(...))``).
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
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: What a progress bar leaves in a stream: "  0%|          | 0/16".
_PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+")
#: A number as prose states a result: "56.9", "82%", "2,820,096" (not "8", "2022" or "r1").
RESULT_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+(?=\s?%))(?![\w])")
#: Settings of the paper and of the profiles that prose may state without an output holding
#: them: sparsity targets and the schedule's warm-up and cool-down shares (percent).
SETTING_NUMBERS = frozenset({"10", "30", "50", "90"})
_CODE_SPAN = re.compile(r"`[^`]*`")


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
    """A copy of ``executed`` to commit as the notebook's source: no injected parameters, no
    timings, no progress-bar widgets, relative paths, stamped with its code digest.

    ``replacements``: absolute path -> what to show instead (longest first is applied first),
    e.g. the output folder -> ``../out``.
    """
    notebook = copy.deepcopy(executed)
    ordered = dict(sorted(replacements.items(), key=lambda item: -len(item[0])))
    notebook.cells = [cell for cell in notebook.cells if INJECTED_TAG not in cell.metadata.get("tags", [])]
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "outputs" in cell:  # a progress bar drawn headless is a frozen "0%" widget: not an output to keep
            cell.outputs = [output for output in cell.outputs if _WIDGET_MIME not in output.get("data", {})]
        for output in cell.get("outputs", []):
            if "text" in output:
                output.text = _relative(output.text, ordered)
            for mime in _TEXT_MIMES:
                if mime in output.get("data", {}):
                    output.data[mime] = _relative(output.data[mime], ordered)
    notebook.metadata.pop("papermill", None)
    notebook.metadata[METADATA_KEY] = {"code_digest": code_digest(notebook)}
    return notebook


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _output_texts(cell: nbformat.NotebookNode) -> list[str]:
    return [_text(text) for output in cell.get("outputs", [])
            for text in [output.get("text", "")] + [output.get("data", {}).get(mime, "") for mime in _TEXT_MIMES]]


_ANY_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+(?:\.\d+)?")


def _printed_values(text: str) -> set[float]:
    """Every number written in ``text``, as a value ("30,464" -> 30464.0)."""
    return {float(token.replace(",", "")) for token in _ANY_NUMBER.findall(text)}


def _holds(values: set[float], number: str, percent: bool) -> bool:
    """Whether some printed value, rounded as ``number`` is written, is ``number``.

    "82%" is held by 82.3 or by the fraction 0.823 (a percentage may be printed as either);
    "56.9" by 56.94 but not by 56.96 or 156.9.
    """
    places = len(number.partition(".")[2])
    target = float(number.replace(",", ""))
    scales = (1.0, 100.0) if percent else (1.0,)
    return any(round(value * scale, places) == target for value in values for scale in scales)


def unsupported_numbers(notebook: nbformat.NotebookNode) -> list[str]:
    """Result numbers that a markdown cell states and no output or code cell of the notebook holds.

    Each entry names the cell and the number. Settings of the paper (:data:`SETTING_NUMBERS`)
    and numbers inside inline code (names, commands) are allowed; everything else a sentence
    quotes must be visible beside it.
    """
    values = _printed_values("\n".join([cell.source for cell in notebook.cells if cell.cell_type == "code"]
                                       + [text for cell in notebook.cells for text in _output_texts(cell)]))
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        prose = _CODE_SPAN.sub("", cell.source)  # `meta-llama/Llama-3.2-1B` names a thing, it claims nothing
        for match in RESULT_NUMBER.finditer(prose):
            number = match.group(1)
            percent = prose[match.end():].lstrip().startswith("%")
            if number not in SETTING_NUMBERS and not _holds(values, number, percent):
                found.append(f"cell {index}: the prose states {number}, which no output holds")
    return list(dict.fromkeys(found))


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """What keeps a notebook from being committed with its outputs: errors, absolute paths,
    widget state or progress bars, and prose numbers that no output holds."""
    found = []
    if "widgets" in notebook.metadata:
        found.append("notebook metadata holds widget state")
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"cell {index}: error output {output.ename}: {output.evalue}")
            if _WIDGET_MIME in output.get("data", {}) or _PROGRESS_BAR.search(_text(output.get("text", ""))):
                found.append(f"cell {index}: a progress bar or widget in an output")
            texts = [output.get("text", "")] + [output.get("data", {}).get(mime, "") for mime in _TEXT_MIMES]
            for text in texts:
                match = ABSOLUTE_PATH.search(text if isinstance(text, str) else "".join(text))
                if match:
                    found.append(f"cell {index}: absolute path {match.group(0)!r} in an output")
    return found + unsupported_numbers(notebook)
