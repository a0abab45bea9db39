"""Exact top-k masks: the per-step selection PST must keep small, on CPU and on accelerators.

Every optimizer step needs, for every sparsified matrix, the mask that zeroes exactly
floor(p * numel) of its smallest scores; among entries tied with the threshold, those with
the lowest index are pruned first. Three strategies give bit-identical masks:

- ``"kthvalue"`` (CPU): sorting (what the official code does) is O(n log n) with a large
  constant; the threshold is the k-th smallest score, found by numpy's introselect
  (:func:`smallest`). Above 4M entries, where that gets slower than reading the matrix a few
  more times, it is estimated from a fixed-size sample, bracketed, and the exact selection runs
  only inside the narrow bracket. It reads counts back to the host, which costs nothing on a
  CPU. A matrix too large to score whole is scored a chunk at a time, twice
  (:func:`keep_by_chunks`): once for the sample, once to classify its entries.
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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Up to this many entries the selection in the whole row (introselect on a copy) is faster than
# bracketing: 3.5 against 4.2 ms for 3072 x 768, 6.3 against 7.9 ms at 4M entries, 21 against
# 14 ms at 8M (2 CPU threads). The torch path's larger matrices are selected by row chunks.
_DIRECT_SELECTION_MAX = 1 << 22
_SAMPLE_SIZE = 8192
# The chunked selection's sample (:func:`keep_by_chunks`, matrices of millions of entries):
# larger, for a bracket three times narrower, whose entries it keeps until the end.
_CHUNKED_SAMPLE_SIZE = 1 << 16
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
    else:  # a row of at most 4M entries, or the bracket missed: select in the whole row
        value = smallest(row, prune)[0]
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
    lo, hi = _bracket(row[_sample_positions(m, _SAMPLE_SIZE, row.device)], k, m)
    if lo is not None:
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
    value = smallest(values, rank)[0]
    pruned_inside = values <= value
    out[index[pruned_inside]] = False
    return value, below + int(torch.count_nonzero(pruned_inside)), index, values


def _sample_positions(m: int, size: int, device: torch.device) -> torch.Tensor:
    # A private generator: the sample must not disturb the training run's random stream.
    generator = torch.Generator(device=device).manual_seed(_SAMPLE_SEED)
    return torch.randint(m, (size,), generator=generator, device=device)


def _bracket(sample: torch.Tensor, k: int, m: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Bounds (lo, hi) that hold the k-th smallest of m entries but for a 6-sigma miss, from a
    uniform sample of them; lo is ``None`` when the bracket reaches down to the smallest."""
    q, size = k / m, sample.numel()
    half_width = _BRACKET_SIGMAS * math.sqrt(q * (1 - q) / size) + 2.0 / size
    lo_pos = max(0, math.floor((q - half_width) * size))
    hi_pos = min(size - 1, math.ceil((q + half_width) * size))
    lo, hi = smallest(sample, lo_pos + 1, hi_pos + 1)
    return (lo if lo_pos > 0 else None), hi


# numpy's dtypes for torch's; others (bfloat16) go through float32, which holds them exactly.
_NUMPY_EXACT = (torch.float16, torch.float32, torch.float64)


def smallest(values: torch.Tensor, *ranks: int) -> list[torch.Tensor]:
    """The ``ranks``-th smallest entries (1-based) of a 1-D tensor, each a 0-d tensor of its dtype.

    On a CPU by numpy's introselect (``np.partition``, all ranks in one call), about ten times
    faster than ``torch.kthvalue``, which also tracks indices; elsewhere by ``kthvalue``."""
    if values.device.type != "cpu":
        return [values.kthvalue(rank).values for rank in ranks]
    exact = values if values.dtype in _NUMPY_EXACT else values.float()
    positions = [rank - 1 for rank in ranks]
    partitioned = np.partition(exact.detach().numpy(), positions)
    return [values.new_tensor(partitioned[position]) for position in positions]


@dataclass(frozen=True)
class Threshold:
    """A mask kept as the outcome of its selection instead of as bits: an entry is pruned when
    its score is below ``value``, or equal to it at a (row-major) index below ``first_kept_tie``.

    That is :func:`keep_mask`'s mask, ties included, as long as the scores are recomputed exactly
    as they were selected from: two numbers per matrix where bits take one per weight.
    """

    value: float
    first_kept_tie: int

    @property
    def keeps_all(self) -> bool:
        return self.value == -math.inf and self.first_kept_tie <= 0

    def after(self, entries: int) -> "Threshold":
        """The same threshold for the entries from ``entries`` on (a chunk of rows)."""
        return Threshold(self.value, self.first_kept_tie - entries)

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        """The boolean keep-mask of ``scores`` (any shape, row-major from entry 0 of the selection)."""
        flat, start = scores.reshape(-1), self._tie_start(scores.numel())
        keep = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
        torch.gt(flat[:start], self.value, out=keep[:start])
        torch.ge(flat[start:], self.value, out=keep[start:])  # from there on, ties are kept
        return keep.view(scores.shape)

    def mask_(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (contiguous) overwritten by the mask, 0 or 1 in their own dtype: one pass."""
        flat, start = scores.view(-1), self._tie_start(scores.numel())
        flat[:start].gt_(self.value)
        flat[start:].ge_(self.value)
        return scores

    def _tie_start(self, numel: int) -> int:
        return min(max(self.first_kept_tie, 0), numel)


KEEP_ALL = Threshold(-math.inf, 0)


def prune_threshold(scores: torch.Tensor, prune: int) -> Threshold:
    """The :class:`Threshold` pruning exactly ``prune`` of the 1-D ``scores`` (the ``"kthvalue"`` strategy)."""
    m = scores.numel()
    if prune <= 0:
        return KEEP_ALL
    if prune >= m:
        return Threshold(math.inf, m)
    value = smallest(scores, prune)[0]
    excess = int(torch.count_nonzero(scores <= value)) - prune
    return Threshold(value.item(), _first_kept_tie(torch.nonzero(scores == value).squeeze(1), excess, m))


def _first_kept_tie(tied: torch.Tensor, excess: int, numel: int) -> int:
    """Of the entries tied at the threshold (their indices, ascending), the last ``excess`` are kept."""
    return int(tied[-excess]) if excess > 0 else numel


def keep_by_chunks(score_of: Callable[[slice], torch.Tensor], numel: int, prune: int,
                   pattern: tuple[int, int] | None, chunks: list[slice],
                   keep_chunk: Callable[[slice, torch.Tensor], None]) -> torch.Tensor | None:
    """The ``"kthvalue"`` selection of a matrix scored a chunk at a time, for one too large to
    score whole (an LLM's, on a CPU): no temporary is larger than a chunk, besides the
    bracket's entries (a few percent of the matrix).

    ``score_of(entries)`` gives the scores of a range of the row-major entries; ``chunks``
    cover them in order (each a multiple of M entries for an N:M pattern). Every chunk is
    scored twice: once for the sample that brackets the threshold, once to pass its entries
    above the bracket to ``keep_chunk(entries, keep)``. Returns the flat indices (int32 where
    they fit) of the further entries kept, those inside the bracket: the mask is that of
    :func:`keep_mask` (ties included). ``None`` when the bracket missed (a 6-sigma event): select whole then.
    Scores are not kept between the passes, so both must give the same values.
    """
    found = _select_by_chunks(score_of, numel, prune, pattern, chunks, keep_chunk)
    if found is None:
        return None
    index, values, value, excess = found
    kept = values > value
    if excess > 0:  # ties at the threshold: keep the last `excess` of them, as _keep_row does
        tied = torch.nonzero(values == value).squeeze(1)
        kept[tied[-excess:]] = True
    return index[kept]


def threshold_by_chunks(score_of: Callable[[slice], torch.Tensor], numel: int, prune: int,
                        chunks: list[slice]) -> Threshold | None:
    """:func:`prune_threshold` of a matrix scored a chunk at a time, as :func:`keep_by_chunks`
    selects it (unstructured); ``None`` when the bracket missed."""
    if prune <= 0:
        return KEEP_ALL
    found = _select_by_chunks(score_of, numel, prune, None, chunks, None)
    if found is None:
        return None
    index, values, value, excess = found
    return Threshold(value.item(), _first_kept_tie(index[values == value], excess, numel))


def _select_by_chunks(score_of, numel: int, prune: int, pattern, chunks: list[slice], keep_chunk):
    """What :func:`keep_by_chunks` and :func:`threshold_by_chunks` share: (flat indices and
    scores of the bracket's entries, the threshold, how many entries at or below it are kept)."""
    if pattern is not None:
        prune = min(prune, numel // pattern[1] * (pattern[1] - pattern[0]))

    def scored(entries: slice) -> torch.Tensor:
        scores = score_of(entries)
        return scores if pattern is None else _candidates(scores.view(1, -1), 0, pattern)[0].view(-1)

    positions, sample = None, None
    for entries in chunks:
        scores = scored(entries)
        if sample is None:
            positions = _sample_positions(numel, _CHUNKED_SAMPLE_SIZE, scores.device)
            sample = scores.new_empty(positions.shape)
        inside = (positions >= entries.start) & (positions < entries.stop)
        sample[inside] = scores[positions[inside] - entries.start]
    lo, hi = _bracket(sample, prune, numel)
    below, indices, values = 0, [], []
    index_dtype = torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64
    for entries in chunks:
        scores = scored(entries)
        above = scores > hi
        if keep_chunk is not None:
            keep_chunk(entries, above)
        inside = ~above
        if lo is not None:
            at_least = scores >= lo
            below += scores.numel() - int(torch.count_nonzero(at_least))
            inside &= at_least
        index = torch.nonzero(inside).squeeze(1)
        indices.append((index + entries.start).to(index_dtype))
        values.append(scores[index])
    index, values = torch.cat(indices), torch.cat(values)
    rank = prune - below
    if not 1 <= rank <= index.numel():
        return None
    value = smallest(values, rank)[0]
    excess = below + int(torch.count_nonzero(values <= value)) - prune
    return index, values, value, excess
