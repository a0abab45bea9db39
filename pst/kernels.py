"""Fused passes of a PST layer over its n x k weight: Triton kernels for CUDA.

The torch code in ``pst.layers`` is the reference, and what runs on CPU, on a GPU without
Triton, and everywhere with ``PST_KERNELS=reference``. Each kernel here computes one of its
passes in a single launch, reading W once, the rank-r factors from cache and the mask as
bits, where the reference takes four to six ops and as many round trips through memory:

- ``masked_update``: M * (W + beta U V) in the compute dtype (forward, and again in backward);
- ``straight_through``: from G = dL/d(M * W'), dL/dS = W' * G and dL/dW' = G * (M + |W'|)
  (G * M when the score has no |W'| term), the latter written over G, or, for a G in a lower
  precision than W (autocast), into a new tensor: G is read in its own dtype;
- ``block_score``: S = |W + beta U V| + alpha1 A B + alpha2 (R 1^T + 1 C^T) of one fused block;
- ``tie_counts`` and ``select_bits``: given each row's threshold (``pst.masking``), the keep-mask
  of a stack of scores straight as bits, with the exact tie rule, in two reads of the scores
  where the reference takes ten passes over them and their boolean masks.

Each is a ``torch.library`` custom op with a fake implementation, so ``torch.compile``
traces a layer whole (the ops stay opaque to inductor, fused already). Sums run in fp32
(parameters in fp32, bf16 or fp16; fp64 layers use the reference). torch has no such fused
op and Triton ships with torch's CUDA builds, hence this module. Tested on CPU through
Triton's interpreter (``TRITON_INTERPRET=1``; tests/test_kernels.py).

``PST_KERNELS``: ``auto`` (default: Triton on CUDA when it imports), ``triton`` (always; on
CPU only with ``TRITON_INTERPRET=1``) or ``reference``; :func:`set_mode` changes it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

MODES = ("auto", "triton", "reference")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _checked(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"PST_KERNELS must be one of {MODES}, got {mode!r}")
    return mode


_mode = _checked(os.environ.get("PST_KERNELS", "auto"))


def set_mode(mode: str) -> None:
    """``"auto"``, ``"triton"`` or ``"reference"`` for every layer from the next call on."""
    global _mode
    _mode = _checked(mode)


def mode() -> str:
    return _mode


# Whether triton is installed, found without importing it (the kernels import it on first use).
_TRITON = importlib.util.find_spec("triton") is not None
_warned = False
_verdicts: dict[torch.device, bool] = {}  # per device: whether the kernels compile and compute right


def enabled(weight: torch.Tensor) -> bool:
    """Whether a layer with this (oriented, dequantized) W runs the fused kernels."""
    return enabled_for(weight.dtype, weight.device)


def enabled_for(dtype: torch.dtype, device: torch.device) -> bool:
    """:func:`enabled` for a W of this float dtype on this device (a quantized W not dequantized yet)."""
    if _mode == "reference" or dtype not in _DTYPES:
        return False
    if _mode == "triton":
        if not _TRITON:
            raise ImportError("PST_KERNELS=triton, but triton is not installed; install it or use PST_KERNELS=auto")
        return True
    if device.type != "cuda":
        return False
    if not _TRITON:
        _warn_no_triton()
        return False
    return _works_on(device)


def _works_on(device: torch.device) -> bool:
    """Whether the kernels compile and compute right on ``device``: checked once, on small
    tensors, so that a Triton, driver or card they fail on costs a warning and the reference
    path, not the training run (``PST_KERNELS=triton`` skips the check and lets errors through)."""
    verdict = _verdicts.get(device)
    if verdict is None and not torch.compiler.is_compiling():  # an eager step (the refresh) checks first
        try:
            _self_check(device)
            verdict = True
        except Exception as error:  # noqa: BLE001 - any failure means: do not use them here
            warnings.warn(f"PST's Triton kernels fail on {device} ({type(error).__name__}: {error}); "
                          "PST runs its unfused torch reference there", stacklevel=3)
            verdict = False
        _verdicts[device] = verdict
    return verdict is not False


def _self_check(device: torch.device) -> None:
    """Every kernel once, with every term, against torch on a 4 x 16 weight of two fused blocks."""
    g = torch.Generator().manual_seed(0)
    w, U, V = (torch.randn(shape, generator=g).to(device) for shape in ((4, 16), (4, 2), (4, 16)))
    A, B, R, C = (torch.randn(shape, generator=g).to(device) for shape in ((4, 3), (3, 16), (4,), (16,)))
    block_of_row = torch.tensor([0, 0, 1, 1], dtype=torch.int32, device=device)
    bits = torch.randint(0, 256, (8,), dtype=torch.uint8, generator=g).to(device)
    mask = (bits.view(-1, 1) >> torch.arange(8, dtype=torch.uint8, device=device) & 1).bool().view(4, 16)
    updated = w + 0.5 * (U.view(4, 1, 2) @ V.view(2, 2, 16)[block_of_row.long()]).view(4, 16)
    close = functools.partial(torch.testing.assert_close, rtol=1e-4, atol=1e-5)  # fp32 sums, in another order
    close(masked_update(w, U, V, block_of_row, bits, 0.5, torch.float32), updated * mask)
    grad, grad_score = torch.randn(4, 16, generator=g).to(device), torch.empty(4, 16, device=device)
    original = grad.clone()
    straight_through(grad, None, grad_score, w, U, V, block_of_row, bits, 0.5, True, True, True)
    close(grad_score, updated * original)
    close(grad, original * (mask + updated.abs()))
    score = torch.empty(2, 16, device=device)  # block 1: rows 2 and 3
    block_score(score, w, U, V[2:], A, B, R, C, 2, 2, 4, 0.5, 0.25, 0.125, True)
    expected = updated[2:].abs() + 0.25 * A[2:] @ B + 0.125 * (R[2:, None] + C[None, :])
    close(score, expected)
    # The selection: prune 17 of each row of 44, with ties at the threshold, against torch's tie
    # rule written out here (pst.masking and pst.layers import this module).
    scores = torch.randn(2, 44, generator=g).to(device)
    scores[:, ::4] = scores[:, 1:2]
    threshold = scores.sort(1).values[:, 16:17]  # a strided view: the ops must take any layout
    below, tied = tie_counts(scores, threshold)
    bits = select_bits(scores, threshold, 17 - below, tied.cumsum(1, dtype=torch.int32) - tied)
    ties = scores == threshold
    pruned = (scores < threshold) | (ties & (ties.cumsum(1) <= 17 - (scores < threshold).sum(1, keepdim=True)))
    unpacked = (bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=device) & 1).view(2, -1)[:, :44]
    if not torch.equal(unpacked.bool(), ~pruned):
        raise AssertionError("the fused selection's mask differs from torch's")


def _warn_no_triton() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn("triton does not import: PST runs its unfused torch reference on CUDA, with 2-3x the kernel "
                  "launches per layer; install triton (it ships with torch's CUDA builds) for the fused kernels",
                  stacklevel=3)


def _kernels():
    """The Triton kernels, imported on first use."""
    from . import _triton_kernels

    return _triton_kernels


#: Rows x columns of a kernel's tile: long along k (contiguous in memory). Triton's interpreter
#: runs one tile per numpy call, so it gets large ones (tests set small ones, to cross tile edges).
TILES = (16, 128)
INTERPRETER_TILES = (256, 1024)
#: Entries of one row per program of the selection kernels (a multiple of 8: whole bytes).
SELECT_TILE = 1024
INTERPRETER_SELECT_TILE = 1 << 16


def _select_tile() -> int:
    return INTERPRETER_SELECT_TILE if os.environ.get("TRITON_INTERPRET") == "1" else SELECT_TILE


def _tiles(n: int, k: int) -> dict:
    bm, bn = INTERPRETER_TILES if os.environ.get("TRITON_INTERPRET") == "1" else TILES
    return {"BM": bm, "BN": bn, "grid": (-(-n // bm), -(-k // bn))}


def _launch(kernel, n: int, k: int, *args, **constants) -> None:
    tiles = _tiles(n, k)
    grid = tiles.pop("grid")
    kernel[grid](*args, **constants, **tiles)


def _factors(U, V, block_of_row):
    """Dummy pointers where a factor is absent (never read: the kernels branch on constants)."""
    return (U if U is not None else block_of_row, V if V is not None else block_of_row)


# -- the ops ------------------------------------------------------------------------------------
# Arguments: ``weight`` is W as (n, k), any strides (a Conv1D's is transposed); ``U`` (n, r) and
# ``V`` (blocks * r, k) contiguous; ``block_of_row`` (n,) int32, each row's block (a fused layer)
# or None; ``bits`` the packed mask or None.


@torch.library.custom_op("pst::masked_update", mutates_args=())
def masked_update(weight: torch.Tensor, U: torch.Tensor | None, V: torch.Tensor | None,
                  block_of_row: torch.Tensor | None, bits: torch.Tensor | None, beta: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """M * (W + beta U V) as a new contiguous (n, k) tensor in ``dtype``."""
    n, k = weight.shape
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    kernel = _kernels().masked_update_kernel
    anchor = bits if bits is not None else weight
    U_, V_ = _factors(U, V, anchor)
    _launch(kernel, n, k, out, weight, weight.stride(0), weight.stride(1), U_, V_,
            block_of_row if block_of_row is not None else anchor, bits if bits is not None else anchor, n, k, beta,
            RANK=U.shape[1] if U is not None else 1, HAS_UPDATE=U is not None, FUSED=block_of_row is not None,
            HAS_MASK=bits is not None)
    return out


@masked_update.register_fake
def _(weight, U, V, block_of_row, bits, beta, dtype):
    return weight.new_empty(weight.shape, dtype=dtype)


@torch.library.custom_op("pst::straight_through", mutates_args=("grad", "updated", "score"))
def straight_through(grad: torch.Tensor, updated: torch.Tensor | None, score: torch.Tensor, weight: torch.Tensor,
                     U: torch.Tensor | None, V: torch.Tensor | None, block_of_row: torch.Tensor | None,
                     bits: torch.Tensor | None, beta: float, need_updated: bool, need_score: bool,
                     magnitude: bool) -> None:
    """``score`` := W' * G (if ``need_score``); ``updated`` := G * (M + |W'|), or G * M without the
    ``magnitude`` term (if ``need_updated``), written over ``grad`` (G) when ``updated`` is None.
    ``grad``, ``updated`` and ``score`` are contiguous (n, k)."""
    n, k = weight.shape
    kernel = _kernels().straight_through_kernel
    anchor = grad
    U_, V_ = _factors(U, V, anchor)
    _launch(kernel, n, k, grad, updated if updated is not None else grad, score if need_score else anchor, weight,
            weight.stride(0), weight.stride(1), U_, V_,
            block_of_row if block_of_row is not None else anchor, bits if bits is not None else anchor, n, k, beta,
            RANK=U.shape[1] if U is not None else 1, HAS_UPDATE=U is not None, FUSED=block_of_row is not None,
            HAS_MASK=bits is not None, NEED_UPDATED=need_updated, NEED_SCORE=need_score, MAGNITUDE=magnitude)


@straight_through.register_fake
def _(grad, updated, score, weight, U, V, block_of_row, bits, beta, need_updated, need_score, magnitude):
    return None


@torch.library.custom_op("pst::block_score", mutates_args=("out",))
def block_score(out: torch.Tensor, weight: torch.Tensor, U: torch.Tensor | None, V: torch.Tensor | None,
                A: torch.Tensor | None, B: torch.Tensor | None, R: torch.Tensor | None, C: torch.Tensor | None,
                start: int, size: int, period: int, beta: float, alpha1: float, alpha2: float,
                magnitude: bool) -> None:
    """S of one block into ``out`` (its rows, k), contiguous. The block's rows of the whole weight are
    ``start`` ... ``start + size`` of every ``period`` rows; W, U, A, R run over all rows, and V (r, k),
    B (r_s, k) and C (k,) are the block's own."""
    rows, k = out.shape
    kernel = _kernels().score_kernel
    anchor = out
    U_, V_ = _factors(U, V, anchor)
    A_, B_ = _factors(A, B, anchor)
    R_, C_ = _factors(R, C, anchor)
    _launch(kernel, rows, k, out, weight, weight.stride(0), weight.stride(1), U_, V_, A_, B_, R_, C_, rows, k,
            start, size, period, beta, alpha1, alpha2,
            RANK=U.shape[1] if U is not None else 1, SCORE_RANK=A.shape[1] if A is not None else 1,
            MAGNITUDE=magnitude, HAS_UPDATE=U is not None, HAS_LOW_RANK=A is not None, HAS_STRUCTURED=R is not None)


@block_score.register_fake
def _(out, weight, U, V, A, B, R, C, start, size, period, beta, alpha1, alpha2, magnitude):
    return None


@torch.library.custom_op("pst::tie_counts", mutates_args=())
def tie_counts(scores: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``scores`` (rows, m), contiguous: the entries below ``threshold`` (rows, 1), and
    per tile of ``SELECT_TILE`` entries those equal to it, (rows, tiles) int32 each."""
    rows, m = scores.shape
    tile = _select_tile()
    tiles = -(-m // tile)
    below, tied = (torch.empty(rows, tiles, dtype=torch.int32, device=scores.device) for _ in range(2))
    _kernels().tie_count_kernel[(rows, tiles)](scores, threshold.contiguous(), below, tied, m, tiles, BN=tile)
    return below.sum(1, keepdim=True, dtype=torch.int32), tied


@tie_counts.register_fake
def _(scores, threshold):
    tiles = -(-scores.shape[1] // _select_tile())
    return (scores.new_empty(scores.shape[0], 1, dtype=torch.int32),
            scores.new_empty(scores.shape[0], tiles, dtype=torch.int32))


@torch.library.custom_op("pst::select_bits", mutates_args=())
def select_bits(scores: torch.Tensor, threshold: torch.Tensor, still: torch.Tensor,
                tied_before: torch.Tensor) -> torch.Tensor:
    """Keep-mask bits, (rows, ceil(m / 8)) uint8: entries below ``threshold`` are pruned, and of
    those equal to it the first ``still`` (rows, 1) of the row; ``tied_before`` (rows, tiles):
    the tied entries in earlier tiles (from :func:`tie_counts`)."""
    rows, m = scores.shape
    tile = _select_tile()
    nbytes = -(-m // 8)
    out = torch.empty(rows, nbytes, dtype=torch.uint8, device=scores.device)
    _kernels().select_bits_kernel[(rows, tied_before.shape[1])](scores, threshold.contiguous(), still.contiguous(),
                                                               tied_before.contiguous(), out, m,
                                                               tied_before.shape[1], nbytes, BN=tile)
    return out


@select_bits.register_fake
def _(scores, threshold, still, tied_before):
    return scores.new_empty(scores.shape[0], -(-scores.shape[1] // 8), dtype=torch.uint8)
