"""Writing tables (Markdown, LaTeX, CSV) and figures (PNG, PDF) atomically, formatted one way."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_atomic, write_text_atomic
from .columns import MISSING
from .records import is_number

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

FIGURE_DPI = 150


def _format_cell(value: Any, decimals: int | None) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:g}"
    return str(value)


def display_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``frame`` as strings, as the Markdown and LaTeX files show it (decimals from ``frame.attrs``)."""
    decimals = frame.attrs.get("decimals", {})
    shown = frame.copy().astype(object)
    for column in shown.columns:
        shown[column] = [_format_cell(v, decimals.get(column)) for v in frame[column]]
    return shown


def _has_index(frame: "pd.DataFrame") -> bool:
    return frame.index.name is not None


def save_table(frame: "pd.DataFrame", path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.md`` (Markdown), ``<stem>.tex`` (LaTeX, escaped) and ``<stem>.csv``, atomically.

    Markdown and LaTeX show the formatted values (see :func:`display_frame`) and the table's
    note (``frame.attrs["note"]``: below the Markdown table, as a comment above the LaTeX one);
    the CSV holds the values themselves. The index is written when it has a name.
    """
    stem = Path(path_stem)
    index = _has_index(frame)
    shown = display_frame(frame)
    note = frame.attrs.get("note", "")
    md_text = markdown_table(frame)

    colalign = _colalign(frame)
    column_format = ("l" if index else "") + "".join("r" if a == "right" else "l" for a in colalign[int(index):])
    tex_text = shown.to_latex(index=index, escape=True, column_format=column_format).replace("|", r"\textbar{}")
    if note:
        tex_text = "".join(f"% {line}\n" for line in note.splitlines()) + tex_text

    written = []
    for suffix, text in ((".md", md_text), (".tex", tex_text), (".csv", frame.to_csv(index=index))):
        path = stem.with_name(stem.name + suffix)
        written.append(write_text_atomic(path, text))
    logger.info("wrote table %s (.md, .tex, .csv)", stem)
    return written


def _colalign(frame: "pd.DataFrame") -> tuple[str, ...]:
    return (("left",) if _has_index(frame) else ()) + tuple(
        "right" if frame[c].map(lambda v: is_number(v) or v == MISSING).all() else "left" for c in frame.columns)


def markdown_table(frame: "pd.DataFrame") -> str:
    """The table as its ``.md`` file holds it: formatted values, then its note."""
    index = _has_index(frame)
    shown = display_frame(frame)
    note = frame.attrs.get("note", "")
    markdown = shown.map(lambda s: s.replace("|", "\\|"))
    markdown.columns = [str(c).replace("|", "\\|") for c in shown.columns]
    if index:
        markdown.index = [str(i).replace("|", "\\|") for i in shown.index]
        markdown.index.name = frame.index.name
    md_text = markdown.to_markdown(index=index, disable_numparse=True, colalign=_colalign(frame)) + "\n"
    return md_text + (f"\n{note}\n" if note else "")


def show(frame: "pd.DataFrame") -> "Any":
    """The table for a notebook, as the report writes it: formatted values and the note below."""
    from IPython.display import Markdown

    return Markdown(markdown_table(frame))


def new_figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure  # not pyplot: no global state, rendered with Agg

    return Figure(figsize=(width, height), layout="constrained")


def panel_grid(count: int, width: float, height: float, extra_height: float = 0.4,
               max_columns: int = 4) -> tuple["Figure", list]:
    """A figure of ``count`` panels (``width`` x ``height`` inches each), at most ``max_columns``
    a row, and its axes in reading order (the unused cells of the last row removed)."""
    columns = min(max(count, 1), max_columns)
    rows = math.ceil(max(count, 1) / columns)
    figure = new_figure(width * columns, height * rows + extra_height)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.remove()
    return figure, axes[:count]


def save_figure(figure: "Figure", path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` atomically; returns both paths."""
    stem = Path(path_stem)
    written = []
    for fmt, options in (("png", {"dpi": FIGURE_DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        path = stem.with_name(f"{stem.name}.{fmt}")
        written.append(write_atomic(path, lambda tmp, f=fmt, o=options: figure.savefig(tmp, format=f, **o)))
    logger.info("wrote figure %s (.png, .pdf)", stem)
    return written
