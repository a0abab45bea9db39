"""The importance-score analysis: how much of a learned score matrix is low-rank plus row/column structure.

The paper's motivation (docs/method.md): movement pruning's data-driven score S (n x k,
one entry per weight) is close to a low-rank matrix plus per-row and per-column effects,
which is why PST learns it as ``A B + R 1^T + 1 C^T``. This module measures that on the
score matrices a GLUE run saves with ``save_scores=True`` (``<record>.scores.safetensors``,
written by ``pst.repro.runners.glue._save_scores``).

For one matrix S, with overall mean ``mu`` and ``X = S - mu`` (total energy ``||X||_F^2``):

* row/column part: the least-squares fit of ``R 1^T + 1 C^T`` to X, i.e. the two-way means
  ``R_i = mean_j S_ij - mu`` and ``C_j = mean_i S_ij - mu``;
* low-rank part: the best rank-r approximation of X (truncated SVD, Eckart-Young);
* both: the row/column part plus the best rank-r approximation of what it leaves.

:func:`structure_decomposition` returns the share of ``||X||_F^2`` each explains. The shares
are only meaningful against a baseline: :func:`shuffled_decomposition` computes them for a
random permutation of S's entries (same values, no structure), and
:func:`iid_expected_shares` gives what pure i.i.d. noise would show (Marchenko-Pastur).

Everything runs in float64 on the CPU. The figures are in :mod:`pst.repro.analysis_figures`.

PST's own scores: the file holds its factors A, B, R, C; :func:`pst_score` rebuilds the
data-driven part ``alpha1 A B + alpha2 (R 1^T + 1 C^T)``. By construction it has rank at most
``r_s + 2``, so its shares at rank 8 are ~1 by design; it is shown beside movement's for its
picture, not as evidence. What PST's score learns (which term carries S, how far its mask
moved from magnitude pruning's, how it ranks weights against movement pruning's score) is
:mod:`pst.repro.analysis_pst`, from the U, V and pre-trained W the file also holds.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..fused import BlockLayout
from ..surgery import block_layout
from .runstate import SCORES_SUFFIX  # the side file a GLUE run writes next to its record (save_scores=True)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
#: Share kinds, in the order tables and figures show them.
SHARE_KINDS = ("row_col", "low_rank", "both")
SHARE_LABELS = {
    "row": "rows (R)",
    "col": "columns (C)",
    "row_col": "rows + columns (R, C)",
    "low_rank": "rank r (SVD)",
    "both": "R + C + rank r",
}
_PST_FACTORS = ("A", "B", "R", "C")


# --------------------------------------------------------------------------- loading


def load_scores(path: Path | str) -> dict[str, dict[str, torch.Tensor]]:
    """Read a ``.scores.safetensors`` file, grouped by layer: ``{layer: {part: tensor}}``.

    Keys in the file are ``<layer name>.<part>`` with part one of ``scores`` (movement),
    ``A``, ``B``, ``R``, ``C``, ``U``, ``V`` and ``W`` (PST; W the frozen pre-trained weight,
    output x input) and ``weight`` (the effective ``M * W'``). ``path`` may
    also be the run's record (``.json``); its side file is read. Layers keep the file's
    order of first appearance (safetensors sorts keys, so that is alphabetical).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_name(path.name.removesuffix(".json") + SCORES_SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(
            f"no score file at {path}; runs write one only when their experiment has save_scores=True "
            f"(<record>{SCORES_SUFFIX}, see the 'analysis' experiment in pst.repro.profiles)"
        )
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        layer, sep, part = key.rpartition(".")
        if not sep:
            raise ValueError(f"{path}: key {key!r} is not '<layer>.<part>'")
        grouped.setdefault(layer, {})[part] = tensor
    return grouped


def pst_score(
    A: torch.Tensor | None,
    B: torch.Tensor | None,
    R: torch.Tensor | None,
    C: torch.Tensor | None,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
    layout: BlockLayout | None = None,
) -> torch.Tensor:
    """PST's learned data-driven score ``alpha1 A B + alpha2 (R 1^T + 1 C^T)`` as an n x k matrix.

    Shapes follow ``pst.layers.SparseLayer``: A (n x r_s), R (n), and for an unfused layer
    B (r_s x k), C (k); for a layer fusing several matrices B and C carry a leading block axis
    (blocks x r_s x k, blocks x k), and ``layout`` (the layer's :class:`pst.fused.BlockLayout`)
    says which rows each block owns: unequal (Phi-3's grouped-query ``qkv_proj``) or interleaved
    per head (GPT-NeoX). Without it the blocks are equal and contiguous (GPT-2 ``c_attn``). The
    result is in output x input orientation, like ``SparseLayer.effective_weight``.
    Either pair may be ``None`` (the ablations that drop AB or R + C), not both.
    """
    if (A is None) != (B is None) or (R is None) != (C is None):
        raise ValueError("pst_score needs A with B and R with C; got "
                         f"A={_shape(A)}, B={_shape(B)}, R={_shape(R)}, C={_shape(C)}")
    if A is None and R is None:
        raise ValueError("pst_score needs A and B, or R and C (or all four); got none")
    blocks = _factor_blocks(B, C)
    n = A.shape[0] if A is not None else R.shape[0]
    k = B.shape[-1] if B is not None else C.shape[-1]
    layout = _checked_layout(layout, blocks, n)
    like = A if A is not None else R
    score = torch.zeros(n, k, dtype=like.dtype, device=like.device)
    if A is not None:
        rank = A.shape[1]
        if A.dim() != 2 or B.shape[-2:] != (rank, k) or (B.dim() == 3 and B.shape[0] != blocks):
            raise ValueError(f"A {tuple(A.shape)} and B {tuple(B.shape)} do not multiply for {blocks} block(s)")
        B = B.reshape(blocks, rank, k)
        for j in range(blocks):  # (repeats, rows, r) @ (r, k)
            layout.rows_of(score, j).add_(alpha1 * layout.rows_of(A, j) @ B[j])
    if R is not None:
        if R.shape != (n,) or C.shape[-1] != k or C.numel() != blocks * k:
            raise ValueError(f"R {tuple(R.shape)} and C {tuple(C.shape)} do not fit an {n} x {k} matrix "
                             f"of {blocks} block(s)")
        C = C.reshape(blocks, k)
        for j in range(blocks):
            layout.rows_of(score, j).add_(alpha2 * (layout.rows_of(R, j).unsqueeze(-1) + C[j]))
    return score


def _factor_blocks(B: torch.Tensor | None, C: torch.Tensor | None) -> int:
    """How many fused blocks PST factors hold (their leading block axis; 1 without one)."""
    if B is not None and B.dim() == 3:
        return B.shape[0]
    return C.shape[0] if C is not None and C.dim() == 2 else 1


def _checked_layout(layout: BlockLayout | None, blocks: int, rows: int) -> BlockLayout:
    if layout is None:
        return BlockLayout.equal(blocks, rows)
    if layout.num_blocks != blocks or layout.rows != rows:
        raise ValueError(f"a layout of {layout.num_blocks} block(s) over {layout.rows} rows does not fit "
                         f"factors of {blocks} block(s) over {rows} rows")
    return layout


def score_matrices(
    scores_by_layer: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]],
    alpha1: float = 1.0,
    alpha2: float = 1.0,
    fused_modules: Mapping[str, int | list | dict] | None = None,
    model_config=None,
) -> dict[str, torch.Tensor]:
    """One data-driven score matrix per (block of a) layer, from :func:`load_scores` groups.

    A group with ``scores`` (movement pruning) gives that matrix; one with PST factors gives
    :func:`pst_score`. A plain tensor is taken as it is. Fused layers are split into their
    blocks, named ``<layer>[b]``, since each block has its own mask (and its own C). Which rows
    each block owns comes from ``fused_modules`` (suffix -> spec, as ``PSTConfig.fused_modules``:
    ``{"c_attn": 3}``, Phi-3's ``{"qkv_proj": ["num_attention_heads", "num_key_value_heads",
    "num_key_value_heads"]}``, GPT-NeoX's interleaved one), whose attribute names are read from
    ``model_config``; PST factors with a block axis and no matching spec split into equal blocks.
    """
    fused = dict(fused_modules or {})
    matrices: dict[str, torch.Tensor] = {}
    for name, value in scores_by_layer.items():
        factors = None
        if isinstance(value, torch.Tensor):
            matrix = value
        elif "scores" in value:
            matrix = value["scores"]
        elif any(part in value for part in _PST_FACTORS):
            factors = {part: value.get(part) for part in _PST_FACTORS}
        else:
            raise ValueError(f"layer {name!r} has no score matrix and no PST factors; parts: {sorted(value)} "
                             f"(expected 'scores' or some of {_PST_FACTORS})")
        rows = matrix.shape[0] if factors is None else (factors["A"] if factors["A"] is not None else factors["R"]).shape[0]
        try:
            layout = block_layout(name, rows, fused, model_config)
            if factors is not None:
                blocks = _factor_blocks(factors["B"], factors["C"])
                layout = _checked_layout(layout if layout.num_blocks > 1 else None, blocks, rows)
                matrix = pst_score(**factors, alpha1=alpha1, alpha2=alpha2, layout=layout)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
        if matrix.dim() != 2:
            raise ValueError(f"layer {name!r}: score must be a matrix, got shape {tuple(matrix.shape)}")
        if layout.num_blocks == 1:
            matrices[name] = matrix
        else:
            for b, block in enumerate(layout.split(matrix)):
                matrices[f"{name}[{b}]"] = block
    return matrices


# --------------------------------------------------------------------------- decomposition


def _as_float64_matrix(S: torch.Tensor) -> torch.Tensor:
    S = torch.as_tensor(S)
    if S.dim() != 2 or S.numel() == 0:
        raise ValueError(f"expected a non-empty n x k matrix, got shape {tuple(S.shape)}")
    return S.detach().to(device="cpu", dtype=torch.float64)


def _check_rank(rank: int, S: torch.Tensor) -> int:
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
    return min(rank, min(S.shape))


def _two_way(S: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, row effects, column effects and residual of the additive two-way fit."""
    mean = S.mean()
    rows = S.mean(dim=1) - mean
    cols = S.mean(dim=0) - mean
    residual = S - mean - rows[:, None] - cols[None, :]
    return mean, rows, cols, residual


def structure_decomposition(S: torch.Tensor, rank: int = 8) -> dict:
    """Shares of ``||S - mean||_F^2`` explained by row/column effects, rank ``rank``, and both.

    Returns a dict with

    * ``row_col``: share of the least-squares ``R 1^T + 1 C^T`` fit (the two-way means), split
      into ``row`` and ``col`` (they are orthogonal, so ``row + col == row_col``);
    * ``low_rank``: share of the best rank-r approximation of ``S - mean`` alone;
    * ``both``: share of the row/column fit plus the best rank-r approximation of its residual;
    * ``spectrum``: singular values of ``S - mean`` divided by ``||S - mean||_F`` (their squares
      sum to 1, so ``low_rank`` is the sum of the first r squares);
    * ``residual_spectrum``: singular values of the residual after the row/column fit, on
      the same scale;
    * ``mean``, ``row_effects`` (n), ``col_effects`` (k): the fitted two-way terms;
    * ``shape``, ``rank`` (clamped to min(n, k)), ``total`` (``||S - mean||_F^2``).

    A constant matrix has nothing to explain: its shares are NaN.
    """
    S = _as_float64_matrix(S)
    rank = _check_rank(rank, S)
    mean, rows, cols, residual = _two_way(S)
    n, k = S.shape
    total = float(((S - mean) ** 2).sum())
    sigma = torch.linalg.svdvals(S - mean)
    sigma_res = torch.linalg.svdvals(residual)
    row_energy = k * float((rows**2).sum())
    col_energy = n * float((cols**2).sum())
    low_rank_energy = float((sigma[:rank] ** 2).sum())
    residual_rank_energy = float((sigma_res[:rank] ** 2).sum())

    def share(energy: float) -> float:
        return energy / total if total > 0 else math.nan

    scale = math.sqrt(total) if total > 0 else math.nan
    return {
        "shape": (n, k),
        "rank": rank,
        "total": total,
        "mean": float(mean),
        "row_effects": rows,
        "col_effects": cols,
        "row": share(row_energy),
        "col": share(col_energy),
        "row_col": share(row_energy + col_energy),
        "low_rank": share(low_rank_energy),
        "both": share(row_energy + col_energy + residual_rank_energy),
        "spectrum": sigma / scale,
        "residual_spectrum": sigma_res / scale,
    }


def structured_approximation(S: torch.Tensor, rank: int = 8) -> torch.Tensor:
    """The fit behind ``both``: ``mean + R 1^T + 1 C^T + (best rank-r approximation of the rest)``."""
    S = _as_float64_matrix(S)
    rank = _check_rank(rank, S)
    mean, rows, cols, residual = _two_way(S)
    approx = mean + rows[:, None] + cols[None, :]
    if rank > 0:
        U, sigma, Vh = torch.linalg.svd(residual, full_matrices=False)
        approx = approx + (U[:, :rank] * sigma[:rank]) @ Vh[:rank]
    return approx


def shuffle_entries(S: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """S with its entries randomly permuted (a fixed ``torch.Generator`` seeded with ``seed``)."""
    S = torch.as_tensor(S)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(S.numel(), generator=generator)
    return S.reshape(-1)[order.to(S.device)].reshape(S.shape)


def shuffled_decomposition(S: torch.Tensor, rank: int = 8, seed: int = 0) -> dict:
    """:func:`structure_decomposition` of :func:`shuffle_entries` (S): the no-structure baseline.

    Same values, same mean and same total energy as S; whatever structure S had is gone,
    so its shares are what the value distribution alone explains.
    """
    return structure_decomposition(shuffle_entries(S, seed), rank)


def marchenko_pastur_share(n: int, k: int, rank: int, grid: int = 20001) -> float:
    """Expected share of ``||X||_F^2`` in the top ``rank`` singular values of an n x k i.i.d. matrix.

    Large-matrix limit: the squared singular values follow the Marchenko-Pastur law with
    ratio ``y = min(n, k) / max(n, k)``; the share is the first moment of its upper tail of
    mass ``rank / min(n, k)``. Roughly ``rank (sqrt(n) + sqrt(k))^2 / (n k)`` for small ranks.
    """
    m, big = min(n, k), max(n, k)
    if rank <= 0:
        return 0.0
    if rank >= m:
        return 1.0
    y = m / big
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    # x = a + (b - a)(1 - cos t) / 2 removes the square-root edges (and the 1/sqrt(x) one at y = 1).
    t = np.linspace(0.0, math.pi, grid)
    x = a + (b - a) * (1 - np.cos(t)) / 2
    half = (b - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        density_dt = np.where(x > 0, half**2 * np.sin(t) ** 2 / (2 * math.pi * y * x), 0.0)
    if y == 1.0:  # the limit at x = 0: sin^2 t / x -> 4 / b
        density_dt[0] = half**2 * 4 / b / (2 * math.pi * y)
    moment_dt = x * density_dt
    # Cumulative integrals from the top edge (t = pi) downwards.
    def tail(values: np.ndarray) -> np.ndarray:
        steps = (values[1:] + values[:-1]) / 2 * np.diff(t)
        return np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])

    mass, moment = tail(density_dt), tail(moment_dt)
    mass, moment = mass / mass[0], moment / moment[0]  # normalise away the quadrature error
    # mass decreases along t: interpolate on the reversed (increasing) arrays.
    return float(np.interp(rank / m, mass[::-1], moment[::-1]))


def iid_expected_shares(n: int, k: int, rank: int = 8) -> dict[str, float]:
    """The shares an n x k matrix of i.i.d. entries would show (approximately): the noise floor.

    ``row_col``: the two-way fit has ``n + k - 2`` of the ``n k - 1`` degrees of freedom of
    ``S - mean``; ``low_rank``: :func:`marchenko_pastur_share`; ``both``: ``row_col`` plus the
    Marchenko-Pastur share of the (n - 1) x (k - 1) residual.
    """
    rank = min(rank, n, k)
    row_col = (n + k - 2) / (n * k - 1) if n * k > 1 else math.nan
    residual_share = marchenko_pastur_share(n - 1, k - 1, rank) if min(n, k) > 1 else 0.0
    return {
        "row_col": row_col,
        "low_rank": marchenko_pastur_share(n, k, rank),
        "both": row_col + (1 - row_col) * residual_share,
    }


def layer_structure_table(
    scores_by_layer: Mapping[str, torch.Tensor | Mapping[str, torch.Tensor]],
    rank: int = 8,
    seed: int = 0,
    **score_options,
) -> "pd.DataFrame":
    """One row per score matrix: its shape and shares, for the real and the shuffled matrix.

    ``scores_by_layer`` maps names to score matrices or to :func:`load_scores` groups
    (``score_options``: ``alpha1``, ``alpha2``, ``fused_modules``, see :func:`score_matrices`).
    Columns: ``layer``, ``shape`` ("n x k"), ``rows``, ``cols``, ``rank``, then ``row_col``,
    ``low_rank``, ``both`` and the same prefixed ``shuffled_``, and ``iid_low_rank``
    (:func:`marchenko_pastur_share`, the noise floor of the rank-r share).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    matrices = score_matrices(scores_by_layer, **score_options)
    rows = []
    for name, matrix in tqdm(matrices.items(), desc="score structure", disable=len(matrices) < 8):
        real = structure_decomposition(matrix, rank)
        shuffled = shuffled_decomposition(matrix, rank, seed)
        n, k = real["shape"]
        rows.append({
            "layer": name,
            "shape": f"{n} x {k}",
            "rows": n,
            "cols": k,
            "rank": real["rank"],
            **{kind: real[kind] for kind in SHARE_KINDS},
            **{f"shuffled_{kind}": shuffled[kind] for kind in SHARE_KINDS},
            "iid_low_rank": marchenko_pastur_share(n, k, real["rank"]),
        })
    columns = ["layer", "shape", "rows", "cols", "rank", *SHARE_KINDS,
               *(f"shuffled_{kind}" for kind in SHARE_KINDS), "iid_low_rank"]
    return pd.DataFrame(rows, columns=columns)


def _shape(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else tuple(t.shape)
