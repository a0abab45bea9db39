"""Exact top-k masks: the per-step selection PST must keep small, on CPU and on accelerators.

Every optimizer step needs, for every sparsified matrix, the mask that zeroes exactly
floor(p * numel) of its smallest scores; among entries tied with the threshold, those with
the lowest index are pruned first. Three strategies give bit-identical masks:

- ``"kthvalue"`` (CPU): sorting (what the official code does) is O(n log n) with a large
  constant and ``torch.kthvalue`` on a full matrix is still ~30 ms for 3072x768 on a laptop
  CPU, so the threshold is estimated from a fixed-size sample, bracketed, and the exact
  selection runs only inside the narrow bracket. It reads counts back to the host, which
  costs nothing on a CPU.
- ``"topk"`` (CUDA and other accelerators): no device-to-host synchronisation at all (no
  ``.item()``, no boolean indexing, no ``nonzero``), one ``topk`` for a whole stack of
  same-shaped matrices; ties are resolved with a cumulative count over the tied entries.
  ``kthvalue`` is never used there: on CUDA it is 30 to 300x slower than ``topk``.
- ``"sort"`` (CUDA graphs): the pruned count is a device tensor (``pst.device_schedule``), the rows
  are sorted and the threshold is read at that count, so every step of the schedule issues
  the same kernels with the same shapes and arguments; ties as for ``"topk"``. A sort costs
  more than ``topk``'s selection; it is what a captured step can replay.

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

STRATEGIES = ("kthvalue", "topk", "sort")
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
    scores: torch.Tensor,
    prune: int | torch.Tensor,
    pattern: tuple[int, int] | None = None,
    strategy: str | None = None,
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

    ``strategy``: ``"kthvalue"``, ``"topk"`` or ``"sort"`` (the default picks by device); all
    give the same mask. ``prune`` as an integer tensor on the scores' device (0-d, or one
    count per row) selects with ``"sort"``, without reading the count back to the host.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (matrices, entries), got shape {tuple(scores.shape)}")
    on_device = isinstance(prune, torch.Tensor)
    strategy = strategy or ("sort" if on_device else default_strategy(scores.device))
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; expected one of {STRATEGIES}")
    if on_device and strategy != "sort":
        raise ValueError(f"a pruned count held in a tensor is selected by 'sort', not {strategy!r}")
    m = scores.shape[1]
    scores, prune = _candidates(scores, prune, pattern)
    if strategy == "sort":
        prune = torch.as_tensor(prune, device=scores.device)
        return _keep_above(scores, _sorted_threshold(scores, prune), prune)
    if prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if prune >= m:
        return torch.zeros_like(scores, dtype=torch.bool)
    if strategy == "topk":
        return _keep_above(scores, _topk_threshold(scores, prune), prune)
    mask = torch.empty_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        _keep_row(scores[row], prune, out=mask[row])
    return mask


def keep_bits(scores: torch.Tensor, prune: int | torch.Tensor, pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`keep_mask` with a sync-free strategy (``"sort"`` for a count in a tensor,
    ``"topk"`` otherwise), packed: (rows, ceil(entries / 8)) uint8, bit i of byte j is entry
    8 j + i, padding kept. The comparison with the threshold, the tie rule and the packing are
    ``pst.kernels``' fused selection: for the devices those kernels run on."""
    from . import kernels

    scores, prune = _candidates(scores.contiguous(), prune, pattern)
    if isinstance(prune, torch.Tensor):
        threshold = _sorted_threshold(scores, prune)
        prune = prune.reshape(-1, 1)
    elif prune <= 0:
        return torch.full((scores.shape[0], -(-scores.shape[1] // 8)), 0xFF, dtype=torch.uint8, device=scores.device)
    else:  # a count past the row's end prunes it whole: its largest entry is the threshold
        threshold = _topk_threshold(scores, min(prune, scores.shape[1]))
    below, tied = kernels.tie_counts(scores, threshold)
    # Of the tied entries, the first (prune - #below) by index are pruned (as in _keep_above).
    return kernels.select_bits(scores, threshold, prune - below, tied.cumsum(1, dtype=torch.int32) - tied)


def _candidates(scores: torch.Tensor, prune, pattern: tuple[int, int] | None):
    """With an N:M pattern, the scores with non-candidates set aside (+inf) and the count capped."""
    if pattern is None:
        return scores, prune
    candidate = nm_candidates(scores, *pattern)
    most = scores.shape[1] // pattern[1] * (pattern[1] - pattern[0])
    prune = prune.clamp(max=most) if isinstance(prune, torch.Tensor) else min(prune, most)
    return scores.masked_fill(~candidate, math.inf), prune


def nm_candidates(scores: torch.Tensor, kept: int, group: int) -> torch.Tensor:
    """The ``group - kept`` lowest-scored entries of each group of ``group`` consecutive ones."""
    if scores.shape[-1] % group:
        raise ValueError(f"{scores.shape[-1]} entries per matrix do not split into groups of {group}")
    grouped = scores.reshape(*scores.shape[:-1], -1, group)
    order = torch.sort(grouped, dim=-1, stable=True).indices  # stable: ties lowest index first
    candidate = torch.zeros_like(grouped, dtype=torch.bool)
    candidate.scatter_(-1, order[..., : group - kept], True)
    return candidate.view_as(scores)


def _topk_threshold(scores: torch.Tensor, prune: int) -> torch.Tensor:
    """Each row's prune-th smallest entry (1 <= prune <= entries), (rows, 1), by one topk, sync-free:
    from whichever of the two topk calls is smaller."""
    m = scores.shape[1]
    if prune <= m - prune:
        return torch.topk(scores, prune, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    return torch.topk(scores, m - prune + 1, dim=1, sorted=False).values.amin(1, keepdim=True)


def _sorted_threshold(scores: torch.Tensor, prune: torch.Tensor) -> torch.Tensor:
    """Each row's prune-th smallest entry with the count on the device, (rows, 1): the same ops,
    shapes and arguments for every count. For prune = 0 it is the smallest entry, which then
    prunes nothing (no entry is below it and no tie is due)."""
    index = (prune.reshape(-1, 1) - 1).clamp(0, scores.shape[1] - 1).expand(scores.shape[0], 1)
    return torch.sort(scores, dim=1).values.gather(1, index)


def _keep_above(scores: torch.Tensor, threshold: torch.Tensor, prune: int | torch.Tensor) -> torch.Tensor:
    """Keep what is above the threshold, and of the entries equal to it all but the first
    (by index) prune - #below."""
    below = scores < threshold
    tied = scores == threshold
    # Of the tied entries, the first (prune - #below) by index are pruned.
    if isinstance(prune, torch.Tensor):
        prune = prune.reshape(-1, 1)
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
