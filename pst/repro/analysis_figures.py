"""Figures of the importance-score analysis (:mod:`pst.repro.analysis`): singular-value spectra,
explained shares against their baselines, heat maps of a score beside its structured fit.

Figures use matplotlib's Agg backend and are returned, not saved: the caller (a notebook,
``pst.repro.report``) saves them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .analysis import (
    SHARE_KINDS,
    SHARE_LABELS,
    _as_float64_matrix,
    score_matrices,
    shuffled_decomposition,
    structure_decomposition,
    structured_approximation,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: Readable names for BERT-like sublayers: the part after the block index, from its start.
_ABBREVIATIONS = (
    (r"^attention\.self\.", ""),
    (r"^attention\.output\.dense$", "attn.out"),
    (r"^intermediate\.dense$", "ffn.in"),
    (r"^output\.dense$", "ffn.out"),
)
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")


def short_names(names: Sequence[str]) -> list[str]:
    """Each layer named by its block and sublayer ("L0 attn.out", "L11 ffn.in"), BERT sublayers
    abbreviated; a name outside numbered blocks keeps its last three parts.

    Each name is shortened on its own, so a panel never loses the block it shows, whatever
    other layers it is drawn with.
    """
    short = []
    for name in names:
        match = _BLOCK.search(name)
        if match is None:
            short.append(".".join(name.split(".")[-3:]))
            continue
        label = match.group(2)
        for pattern, replacement in _ABBREVIATIONS:
            label = re.sub(pattern, replacement, label)
        short.append(f"L{match.group(1)} {label}")
    return short


def _pick(names: Sequence[str], chosen: Iterable[str] | None, limit: int) -> list[str]:
    """The chosen names (checked), or up to ``limit`` names spread evenly over the list."""
    names = list(names)
    if chosen is not None:
        chosen = list(chosen)
        missing = [c for c in chosen if c not in names]
        if missing:
            raise ValueError(f"unknown layer(s) {missing}; available: {names[:6]}{' ...' if len(names) > 6 else ''}")
        return chosen
    if len(names) <= limit:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, limit).round().astype(int)]


#: Normalised singular values below this many machine epsilons (of the score's own dtype)
#: are rounding noise around an exact zero and are not plotted.
_ZERO_SINGULAR_VALUE = 100


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure  # not pyplot: no global state, works headless (Agg)

    return Figure(figsize=(width, height), layout="constrained")


def spectrum_figure(
    scores_by_layer: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]],
    layers: Iterable[str] | None = None,
    rank: int = 8,
    max_layers: int = 4,
    seed: int = 0,
    **score_options,
) -> "Figure":
    """Normalised singular values (log scale) of a few score matrices against their shuffled baselines.

    One panel per layer: ``S - mean`` (real), the residual after the row/column fit, and the
    shuffled matrix, all divided by ``||S - mean||_F``, on log-log axes (the head of a
    768-value spectrum is where low rank shows); a dashed line marks ``rank``. Singular
    values that are numerically zero (the double-centred residual loses one rank, PST's
    score has rank <= r_s + 2) are left out of the log axis: those below 100 machine epsilons
    of the score's dtype.
    ``layers`` picks matrices by name (see :func:`score_matrices`), default ``max_layers``
    spread over the model.
    """
    matrices = score_matrices(scores_by_layer, **score_options)
    names = _pick(list(matrices), layers, max_layers)
    if not names:
        raise ValueError("spectrum_figure needs at least one score matrix")
    columns = min(len(names), 4)
    grid_rows = math.ceil(len(names) / columns)
    figure = _figure(3.2 * columns, 2.8 * grid_rows)
    axes = figure.subplots(grid_rows, columns, squeeze=False, sharey=True).ravel()
    for ax in axes[len(names):]:
        ax.remove()
    for ax, name, label in zip(axes, names, short_names(names)):
        matrix = matrices[name]
        real = structure_decomposition(matrix, rank)
        shuffled = shuffled_decomposition(matrix, rank, seed)
        floor = _ZERO_SINGULAR_VALUE * torch.finfo(matrix.dtype if matrix.is_floating_point() else torch.float64).eps
        for values, style in (
            (real["spectrum"], dict(label="score S - mean")),
            (real["residual_spectrum"], dict(label="after R, C removed", linestyle=":")),
            (shuffled["spectrum"], dict(label="shuffled S", color="grey")),
        ):
            values = values.numpy()
            shown = values > floor  # exact zeros (e.g. the residual's lost rank) off the log axis
            ax.plot(np.arange(1, len(values) + 1)[shown], values[shown], **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(real["rank"], color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"{label}\n{real['shape'][0]} x {real['shape'][1]}", fontsize=9)
        ax.set_xlabel("singular value index")
    axes[0].set_ylabel(r"$\sigma_i / \|S - \bar{S}\|_F$")
    axes[0].legend(fontsize=7)
    return figure


def explained_share_figure(table: "pd.DataFrame", kinds: Sequence[str] = SHARE_KINDS) -> "Figure":
    """Bars of the explained share per layer, real against shuffled, one panel per share kind.

    ``table`` is :func:`layer_structure_table`'s output; when it has ``iid_low_rank`` the
    ``low_rank`` panel also marks the i.i.d. noise floor.
    """
    unknown = [kind for kind in kinds if kind not in SHARE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {SHARE_KINDS}, got {list(kinds)}")
    missing = [c for c in ("layer", *kinds, *(f"shuffled_{k}" for k in kinds)) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; build it with layer_structure_table")
    if table.empty:
        raise ValueError("explained_share_figure needs a table with at least one layer")
    labels = short_names(table["layer"].tolist())
    x = np.arange(len(table))
    figure = _figure(max(6.0, 0.16 * len(table) + 2), 2.2 * len(kinds) + 0.8)
    axes = figure.subplots(len(kinds), 1, sharex=True, squeeze=False).ravel()
    width = 0.4
    rank = int(table["rank"].max()) if "rank" in table.columns else None
    for ax, kind in zip(axes, kinds):
        ax.bar(x - width / 2, table[kind], width, label="learned score")
        ax.bar(x + width / 2, table[f"shuffled_{kind}"], width, label="shuffled", color="grey")
        if kind == "low_rank" and "iid_low_rank" in table.columns:
            ax.plot(x, table["iid_low_rank"], "k_", markersize=8, label="i.i.d. noise (MP)")
        title = SHARE_LABELS[kind].replace("rank r", f"rank {rank}") if rank is not None else SHARE_LABELS[kind]
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of energy")
    legend = {}  # one legend for the figure, with the i.i.d. marks of the rank panel
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend), fontsize=7,
                  frameon=False)
    axes[-1].set_xticks(x, labels, rotation=90, fontsize=6 if len(x) > 24 else 8)
    return figure


def heatmap_figure(
    S_by_name: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]],
    names: Iterable[str] | None = None,
    rank: int = 8,
    crop: int = 64,
    max_layers: int = 3,
    **score_options,
) -> "Figure":
    """Heat maps of score matrices (top-left ``crop`` x ``crop``) beside their R + C + rank-r fits.

    One row per matrix: the score, its :func:`structured_approximation` (computed on the
    whole matrix, then cropped) on the same colour scale, and one colour bar, so
    ``3 * rows`` axes. The colour scale spans the 1st to 99th percentile of the crop.
    """
    matrices = score_matrices(S_by_name, **score_options)
    chosen = _pick(list(matrices), names, max_layers)
    if not chosen:
        raise ValueError("heatmap_figure needs at least one score matrix")
    figure = _figure(7.0, 3.0 * len(chosen))
    axes = figure.subplots(len(chosen), 2, squeeze=False)
    for (ax_real, ax_fit), name, label in zip(axes, chosen, short_names(chosen)):
        matrix = _as_float64_matrix(matrices[name])
        fit = structured_approximation(matrix, rank)
        share = structure_decomposition(matrix, rank)["both"]
        real_crop, fit_crop = matrix[:crop, :crop].numpy(), fit[:crop, :crop].numpy()
        low, high = np.percentile(real_crop, [1, 99])
        if high <= low:
            low, high = low - 0.5, high + 0.5
        image = ax_real.imshow(real_crop, cmap="RdBu_r", vmin=low, vmax=high, interpolation="nearest")
        ax_fit.imshow(fit_crop, cmap="RdBu_r", vmin=low, vmax=high, interpolation="nearest")
        ax_real.set_title(f"{label}: score", fontsize=9)
        ax_fit.set_title(f"R + C + rank {min(rank, min(matrix.shape))} ({share:.0%} of energy)", fontsize=9)
        for ax in (ax_real, ax_fit):
            ax.set_xlabel("input")
        ax_real.set_ylabel("output")
        figure.colorbar(image, ax=[ax_real, ax_fit], shrink=0.8)
    return figure
