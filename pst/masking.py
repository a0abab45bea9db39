"""Exact top-k masks: the per-step selection PST must keep small, on CPU and on accelerators.

Every optimizer step needs, for every sparsified matrix, the mask that zeroes exactly
floor(p * numel) of its smallest scores; among entries tied with the threshold, those with
the lowest index are pruned first. Two strategies give bit-identical masks:

- ``"kthvalue"`` (CPU): sorting (what the official code does) is O(n log n) with a large
  constant and ``torch.kthvalue`` on a full matrix is still ~30 ms for 3072x768 on a laptop
  CPU, so the threshold is estimated from a fixed-size sample, bracketed, and the exact
  selection runs only inside the narrow bracket. It reads counts back to the host, which
  costs nothing on a CPU.
- ``"topk"`` (CUDA and other accelerators): no device-to-host synchronisation at all (no
  ``.item()``, no boolean indexing, no ``nonzero``), one ``topk`` for a whole stack of
  same-shaped matrices; ties are resolved with a cumulative count over the tied entries.
  ``kthvalue`` is never used there: on CUDA it is 30 to 300x slower than ``topk``.

N:M patterns restrict the candidates first (see :func:`keep_mask`). No package provides
this, hence the code.
"""
from __future__ import annotations

import math
import re

import torch

# Below this many entries a direct kthvalue is as fast as the bracketing.
_DIRECT_SELECTION_MAX = 1 << 16
_SAMPLE_SIZE = 8192
# Half-width of the bracket, in standard deviations of the sampled quantile.
_BRACKET_SIGMAS = 6.0
_SAMPLE_SEED = 0x5EED

STRATEGIES = ("kthvalue", "topk")
UNSTRUCTURED = "unstructured"


def num_pruned(sparsity: float, numel: int) -> int:
    """floor(p * numel), robust to float noise such as 0.29 * 100 = 28.999999999999996."""
    return min(numel, math.floor(sparsity * numel + 1e-6))


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"N:M"`` -> (N, M): keep N of every M consecutive weights; ``"unstructured"`` -> None."""
    if pattern == UNSTRUCTURED:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if match is None:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    kept, group = int(match[1]), int(match[2])
    if not 0 < kept < group:
        raise ValueError(f"pattern {pattern!r} needs 0 < N < M")
    return kept, group


def max_sparsity(pattern: tuple[int, int] | None) -> float:
    """The largest sparsity a pattern can reach: 1 - N/M (unstructured: anything below 1)."""
    return 1.0 if pattern is None else 1.0 - pattern[0] / pattern[1]


def validate_sparsity(sparsity: float, pattern: tuple[int, int] | None, name: str = "sparsity") -> None:
    """Raise ``ValueError`` unless the sparsity is in [0, 1) and reachable with the pattern."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    if pattern is not None and sparsity > max_sparsity(pattern) + 1e-9:
        raise ValueError(
            f"pattern {pattern[0]}:{pattern[1]} prunes at most {max_sparsity(pattern):.0%}; got {name}={sparsity!r}"
        )


def default_strategy(device: torch.device) -> str:
    """``"kthvalue"`` on CPU, ``"topk"`` (sync-free) on every accelerator."""
    return "kthvalue" if device.type == "cpu" else "topk"


def keep_mask(
    scores: torch.Tensor, prune: int, pattern: tuple[int, int] | None = None, strategy: str | None = None
) -> torch.Tensor:
    """Boolean keep-mask for ``scores`` of shape (matrices, entries): each row loses exactly ``prune``.

    The pruned entries are the ``prune`` smallest of the row; among entries tied with the
    threshold, those with the lowest index are pruned first.

    With an N:M ``pattern`` (groups of M consecutive entries of a row-major matrix whose
    rows have a multiple of M entries, i.e. groups along the input dimension), only the
    M - N lowest-scored entries of each group are candidates (ties: lowest index first),
    and the ``prune`` lowest-scored candidates are pruned. The count stays exact along the
    schedule, and at sparsity 1 - N/M every group holds exactly M - N zeros. Scores must
    be finite: non-candidates are set aside as +inf.

    ``strategy``: ``"kthvalue"`` or ``"topk"`` (the default picks by device); both give the
    same mask.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (matrices, entries), got shape {tuple(scores.shape)}")
    strategy = strategy or default_strategy(scores.device)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; expected one of {STRATEGIES}")
    m = scores.shape[1]
    if pattern is not None:
        candidate = nm_candidates(scores, *pattern)
        prune = min(prune, m // pattern[1] * (pattern[1] - pattern[0]))
        scores = scores.masked_fill(~candidate, math.inf)
    if prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if prune >= m:
        return torch.zeros_like(scores, dtype=torch.bool)
    if strategy == "topk":
        return _keep_topk(scores, prune)
    mask = torch.empty_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        _keep_row(scores[row], prune, out=mask[row])
    return mask


def nm_candidates(scores: torch.Tensor, kept: int, group: int) -> torch.Tensor:
    """The ``group - kept`` lowest-scored entries of each group of ``group`` consecutive ones."""
    if scores.shape[-1] % group:
        raise ValueError(f"{scores.shape[-1]} entries per matrix do not split into groups of {group}")
    grouped = scores.reshape(*scores.shape[:-1], -1, group)
    order = torch.sort(grouped, dim=-1, stable=True).indices  # stable: ties lowest index first
    candidate = torch.zeros_like(grouped, dtype=torch.bool)
    candidate.scatter_(-1, order[..., : group - kept], True)
    return candidate.view_as(scores)


def _keep_topk(scores: torch.Tensor, prune: int) -> torch.Tensor:
    """Sync-free selection for a stack of rows: one topk, then exact tie-breaking by index."""
    m = scores.shape[1]
    # The prune-th smallest value, from whichever of the two topk calls is smaller.
    if prune <= m - prune:
        threshold = torch.topk(scores, prune, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    else:
        threshold = torch.topk(scores, m - prune + 1, dim=1, sorted=False).values.amin(1, keepdim=True)
    below = scores < threshold
    tied = scores == threshold
    # Of the tied entries, the first (prune - #below) by index are pruned.
    still = prune - below.sum(1, keepdim=True, dtype=torch.int32)
    pruned_tied = tied & (tied.cumsum(1, dtype=torch.int32) <= still)
    return ~(below | pruned_tied)


def _keep_row(row: torch.Tensor, prune: int, out: torch.Tensor) -> None:
    """One row's keep-mask written into ``out`` (the CPU strategy: reading counts back is free)."""
    located = _bracketed(row, prune, out) if row.numel() > _DIRECT_SELECTION_MAX else None
    if located is not None:
        value, at_or_below, index, values = located
    else:  # a small row, or the bracket missed: select in the whole row
        value = row.kthvalue(prune).values
        torch.gt(row, value, out=out)
        at_or_below = row.numel() - int(torch.count_nonzero(out))
    excess = at_or_below - prune
    if excess > 0:  # ties at the threshold: keep the last `excess` of them, pruning exactly `prune`
        tied = index[values == value] if located is not None else torch.nonzero(row == value).squeeze(1)
        out[tied[-excess:]] = True


def _bracketed(row: torch.Tensor, k: int, out: torch.Tensor):
    """The k-th smallest of ``row`` found inside a bracket estimated from a sample.

    Writes ``row > value`` into ``out`` along the way (every entry above the bracket's lower
    end, minus those inside it up to the value: no extra pass over the row) and returns
    (value, entries <= value, indices and values of the bracket's entries), or ``None`` if
    the bracket missed (``out`` is then to be overwritten).
    """
    m = row.numel()
    # A private generator: the sample must not disturb the training run's random stream.
    generator = torch.Generator(device=row.device).manual_seed(_SAMPLE_SEED)
    sample = row[torch.randint(m, (_SAMPLE_SIZE,), generator=generator, device=row.device)]
    q = k / m
    half_width = _BRACKET_SIGMAS * math.sqrt(q * (1 - q) / _SAMPLE_SIZE) + 2.0 / _SAMPLE_SIZE
    lo_pos = max(0, math.floor((q - half_width) * _SAMPLE_SIZE))
    hi_pos = min(_SAMPLE_SIZE - 1, math.ceil((q + half_width) * _SAMPLE_SIZE))
    # Two selections in the sample cost a seventh of sorting it.
    lo, hi = sample.kthvalue(lo_pos + 1).values, sample.kthvalue(hi_pos + 1).values
    if lo_pos > 0:
        torch.ge(row, lo, out=out)
        below = m - int(torch.count_nonzero(out))
        inside = out & (row <= hi)
    else:
        out.fill_(True)
        below, inside = 0, row <= hi
    index = torch.nonzero(inside).squeeze(1)
    rank = k - below
    if not 1 <= rank <= index.numel():
        return None
    values = row[index]
    value = values.kthvalue(rank).values
    pruned_inside = values <= value
    out[index[pruned_inside]] = False
    return value, below + int(torch.count_nonzero(pruned_inside)), index, values
