"""PST's learned scores: which term decides its mask, how far the mask moved from magnitude
pruning's, and whether its cheap data-driven score learns what movement pruning's learns.

:mod:`pst.repro.analysis` shows that movement pruning's (MvP) learned score is close to
low-rank plus row/column structure, PST's premise. This module asks what PST then learns,
from a run's score file (``pst.repro.runners.glue._save_scores``: A, B, R, C, U, V, the frozen
pre-trained W and the effective ``M * W'``). For one layer, with ``W' = W + beta U V`` and
``S = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T)``:

* **term shares** (:func:`term_shares`): the energy of S around its mean, ``||S - mean||_F^2``
  (``n k`` times its variance), splits exactly into each term's own energy around its mean plus
  the cross terms ``2 <T_i - mean, T_j - mean>``; the shares say which term the ranking of S,
  hence the mask, follows. Cross terms can be negative (terms that offset each other).
* **mask movement** (:func:`kept_outside`): of the weights PST keeps, the share that magnitude
  pruning at the same count would prune, by ``|W|`` (where PST starts: at step 0 the share is
  0) and by ``|W'|`` (what the data-free term alone would keep).
* **agreement with MvP** (:func:`spearman`): the rank correlation between PST's data-driven part
  ``alpha1 A B + alpha2 (R 1^T + 1 C^T)`` and MvP's learned score of the same layer (same task,
  same pre-trained model), beside MvP's score against ``|W|``: a reference for how much of
  MvP's ranking plain magnitude already carries.

Fused layers (GPT-2 ``c_attn``, one mask per block) are not supported here: the analysis runs
are BERT's. Everything runs in float64 on the CPU; figures are returned, not saved.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..masking import keep_mask, parse_pattern
from .analysis import pst_score
from .analysis_figures import short_names

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: The terms of PST's score S, in the order tables and figures show them, with their labels.
TERMS = ("magnitude", "low_rank", "structured")
TERM_LABELS = {"magnitude": "|W'|", "low_rank": "α1·AB", "structured": "α2·(R1ᵀ + 1Cᵀ)", "covariance": "cross terms"}
TERM_COLORS = {"magnitude": "tab:blue", "low_rank": "tab:red", "structured": "tab:orange", "covariance": "0.75"}

#: The parts a PST layer's group in a score file needs for this analysis.
REQUIRED_PARTS = ("W", "U", "V", "weight")


class IncompleteScoreFile(ValueError):
    """A score file lacks what the PST analysis needs (written before runs saved W, U and V)."""


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _check_layer(name: str, parts: Mapping[str, torch.Tensor]) -> None:
    missing = [p for p in REQUIRED_PARTS if p not in parts]
    if missing:
        raise IncompleteScoreFile(
            f"layer {name!r} lacks {missing} in its score file (parts: {sorted(parts)}); PST runs save the "
            "pre-trained W, U and V since the PST score analysis was added: rerun the analysis experiment")
    V, B, C = parts["V"], parts.get("B"), parts.get("C")
    if V.dim() == 3 or (B is not None and B.dim() == 3) or (C is not None and C.dim() == 2):
        raise ValueError(f"layer {name!r} fuses several matrices (V {tuple(V.shape)}): the PST score analysis "
                         "supports unfused layers only (the analysis runs are BERT's)")


def updated_weight(parts: Mapping[str, torch.Tensor], beta: float = 1.0, name: str = "layer") -> torch.Tensor:
    """``W' = W + beta U V`` of one layer's score-file group, in float64."""
    _check_layer(name, parts)
    return _f64(parts["W"]) + beta * (_f64(parts["U"]) @ _f64(parts["V"]))


def score_terms(parts: Mapping[str, torch.Tensor], alpha1: float = 1.0, alpha2: float = 1.0, beta: float = 1.0,
                magnitude: bool = True, name: str = "layer") -> dict[str, torch.Tensor]:
    """The terms of S for one layer, those it has: ``magnitude`` |W'|, ``low_rank`` alpha1 A B and
    ``structured`` alpha2 (R 1^T + 1 C^T), each n x k in float64 (S is their sum).

    ``magnitude``: whether S holds |W'| (``PSTConfig.score_magnitude``; the file cannot tell).
    """
    terms = {"magnitude": updated_weight(parts, beta, name).abs()} if magnitude else {}
    A, B, R, C = (parts.get(p) for p in ("A", "B", "R", "C"))
    if A is not None:
        terms["low_rank"] = pst_score(_f64(A), _f64(B), None, None, alpha1=alpha1)
    if R is not None:
        terms["structured"] = pst_score(None, None, _f64(R), _f64(C), alpha2=alpha2)
    if not terms:
        raise ValueError(f"layer {name!r} has no score term")
    return terms


def term_shares(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Share of ``||S - mean||_F^2`` (S the sum of ``terms``) each term carries on its own, and
    ``covariance``: the cross terms' share. They sum to 1; all NaN when S is constant."""
    centred = {name: _f64(t) - _f64(t).mean() for name, t in terms.items()}
    total = float(sum(centred.values()).square().sum())
    if total <= 0:
        return {**{name: math.nan for name in centred}, "covariance": math.nan}
    shares = {name: float(c.square().sum()) / total for name, c in centred.items()}
    names = list(centred)
    cross = sum(2 * float((centred[a] * centred[b]).sum()) for i, a in enumerate(names) for b in names[i + 1:])
    return {**shares, "covariance": cross / total}


def kept_outside(kept: torch.Tensor, reference: torch.Tensor, pattern: str = "unstructured") -> float:
    """Share of the kept entries (``kept``, boolean) that pruning by ``reference`` would prune,
    at the same count (and N:M ``pattern``), ties broken as the layer breaks them; NaN if none is kept."""
    if kept.shape != reference.shape:
        raise ValueError(f"mask {tuple(kept.shape)} and reference score {tuple(reference.shape)} differ in shape")
    kept = kept.detach().cpu().bool()
    if not kept.any():
        return math.nan
    prune = int((~kept).sum())
    by_reference = keep_mask(_f64(reference).reshape(1, -1), prune, parse_pattern(pattern)).view_as(kept)
    return float((kept & ~by_reference).sum()) / float(kept.sum())


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation over all entries (average ranks for ties); NaN if either is constant."""
    from scipy.stats import rankdata

    if x.shape != y.shape:
        raise ValueError(f"cannot correlate matrices of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = (rankdata(_f64(t).reshape(-1).numpy()) for t in (x, y))
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else math.nan


def pst_layer_table(pst_layers: Mapping[str, Mapping[str, torch.Tensor]],
                    movement_layers: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                    alpha1: float = 1.0, alpha2: float = 1.0, beta: float = 1.0, magnitude: bool = True,
                    pattern: str = "unstructured") -> "pd.DataFrame":
    """One row per PST layer (groups of :func:`pst.repro.analysis.load_scores`): term shares and
    mask movement, and with ``movement_layers`` (an MvP run's groups) the rank correlations.

    Columns: ``layer``, ``shape``, ``share_<term>`` for :data:`TERMS` (NaN for a term the score
    lacks) and ``share_covariance``; ``kept_outside_map_w`` and ``kept_outside_map_w_updated``
    (:func:`kept_outside` by |W| and |W'|); with ``movement_layers``: ``spearman_pst_mvp`` (PST's
    data-driven part against MvP's score) and ``spearman_mvp_abs_w`` (MvP's score against the
    pre-trained |W|), NaN for a layer MvP's file lacks. The other arguments are the run's
    ``PSTConfig`` (``alpha1``, ``alpha2``, ``beta``, ``score_magnitude``, ``pattern``).
    """
    import pandas as pd

    rows = []
    for name, parts in pst_layers.items():
        terms = score_terms(parts, alpha1, alpha2, beta, magnitude, name)
        shares = term_shares(terms)
        W, updated = _f64(parts["W"]), updated_weight(parts, beta, name)
        kept = parts["weight"] != 0  # the effective M * W': zero where pruned
        row = {"layer": name, "shape": f"{W.shape[0]} x {W.shape[1]}",
               **{f"share_{t}": shares.get(t, math.nan) for t in (*TERMS, "covariance")},
               "kept_outside_map_w": kept_outside(kept, W.abs(), pattern),
               "kept_outside_map_w_updated": kept_outside(kept, updated.abs(), pattern)}
        if movement_layers is not None:
            mvp = movement_layers.get(name, {}).get("scores")
            data_driven = sum(terms[t] for t in ("low_rank", "structured") if t in terms)
            has_data_term = isinstance(data_driven, torch.Tensor)
            row["spearman_pst_mvp"] = spearman(data_driven, mvp) if mvp is not None and has_data_term else math.nan
            row["spearman_mvp_abs_w"] = spearman(mvp, W.abs()) if mvp is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def pst_terms_figure(table: "pd.DataFrame", title: str = "", sparsity: float | None = None) -> "Figure":
    """Per layer: the term shares of S as stacked bars (cross terms close the bar at 1), the share
    of kept weights magnitude pruning would prune (with the chance level ``sparsity``: a random
    mask's kept weight is among magnitude pruning's pruned ones with probability p), and, when the
    table has them, the rank correlations with MvP's score. ``table`` is :func:`pst_layer_table`'s output."""
    from matplotlib.figure import Figure  # not pyplot: no global state, works headless (Agg)

    from ..methods import METHODS

    if table.empty:
        raise ValueError("pst_terms_figure needs a table with at least one layer")
    correlations = "spearman_pst_mvp" in table.columns and table["spearman_pst_mvp"].notna().any()
    x, labels = np.arange(len(table)), short_names(table["layer"].tolist())
    figure = Figure(figsize=(max(6.0, 0.18 * len(table) + 2.5) + 2.5, 2.4 * (2 + correlations) + 0.8),
                    layout="constrained")
    axes = figure.subplots(2 + correlations, 1, sharex=True, squeeze=False).ravel()

    bottom = np.zeros(len(table))
    for term in TERMS:
        share = table[f"share_{term}"].fillna(0.0).to_numpy()
        axes[0].bar(x, share, 0.8, bottom=bottom, label=TERM_LABELS[term], color=TERM_COLORS[term])
        bottom += share
    axes[0].bar(x, table["share_covariance"].fillna(0.0), 0.8, bottom=bottom, label=TERM_LABELS["covariance"],
                color=TERM_COLORS["covariance"], hatch="//", edgecolor="white", linewidth=0)
    axes[0].axhline(1.0, color="black", linewidth=0.6)
    axes[0].set_ylabel("share of S's energy")
    axes[0].set_title("which term carries the score S (variance around its mean)", fontsize=9)

    width = 0.4
    axes[1].bar(x - width / 2, table["kept_outside_map_w"], width, label="by |W| (pre-trained)", color="0.35")
    axes[1].bar(x + width / 2, table["kept_outside_map_w_updated"], width, label="by |W'| (updated)", color="0.7")
    if sparsity is not None:
        axes[1].axhline(sparsity, color="black", linestyle="--", linewidth=1.0, label=f"random mask (chance, p = {sparsity:.0%})")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("share of kept")
    axes[1].set_title("kept weights that magnitude pruning would prune", fontsize=9)

    if correlations:
        axes[2].bar(x - width / 2, table["spearman_pst_mvp"], width, color=METHODS["pst"].color,
                    label="PST's αAB + α(R1ᵀ+1Cᵀ) vs MvP's score")
        axes[2].bar(x + width / 2, table["spearman_mvp_abs_w"], width, color=METHODS["magnitude"].color,
                    label="MvP's score vs |W| (reference)")
        axes[2].axhline(0.0, color="black", linewidth=0.6)
        axes[2].set_ylim(-1, 1)
        axes[2].set_ylabel("Spearman ρ")
        axes[2].set_title("does PST's cheap score rank weights as MvP's full score does?", fontsize=9)
    for ax in axes:  # beside the panel, not over the bars
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1].set_xticks(x, labels, rotation=90, fontsize=6 if len(x) > 24 else 8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
