"""How a sparse layer reads its frozen base weight W, and which of its zeros it must keep.

A layer needs W as a dense (n, k) float tensor in three places (W' = W + beta U V in the
forward and backward passes, and |W'| in the score). Plain tensors are read as they are (no
copy). Quantized weights are dequantized layer by layer, when the layer needs them, into a
temporary that lives as long as that layer's computation: the model is never dense as a whole.
Where the layer works a chunk of rows at a time (the torch path on an LLM's matrices), only the
chunk's rows are dequantized (:func:`row_reader`).

Quantized bases supported: torchao's weight-only tensor subclasses (``quantize_(model,
Int8WeightOnlyConfig())`` or ``IntxWeightOnlyConfig(weight_dtype=torch.int4)``), which keep
the float dtype they were quantized from and dequantize with ``weight.dequantize()``; and
bitsandbytes ``Linear4bit`` (QLoRA's NF4/FP4 base), whose packed ``Params4bit`` carries W's
shape and dtype in its ``quant_state``. Any other quantized weight (bitsandbytes
``Linear8bitLt``, whose int8 weight does not say which float dtype it came from; GPTQ, AWQ,
HQQ modules, ...) is refused by :func:`check_base` with a message that names its class.

Keep-zeros mode (``PSTConfig(keep_zeros=True)``): the base's zeros (``W == 0``, a checkpoint
pruned by SparseGPT, Wanda, llm-compressor or PST itself) are always pruned. The support is
read from W whenever a layer rebuilds its mask (W is frozen, so it never changes), never
stored. :func:`keep_zeros_prunes` gives each fused block's prune count, max(floor(p n k), the
base zeros the selection prunes anyway); the layer scores the base's zeros -inf and ANDs the
selected mask with the support.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

SUPPORTED_QUANTIZED = (
    "torchao weight-only tensors (quantize_(model, Int8WeightOnlyConfig()) or "
    "IntxWeightOnlyConfig(weight_dtype=torch.int4)) and bitsandbytes Linear4bit"
)


def _is_torchao(weight: torch.Tensor) -> bool:
    # A torchao tensor means torchao is imported already: never import it here.
    return "torchao" in sys.modules and type(weight).__module__.startswith("torchao") and hasattr(weight, "dequantize")


def _is_bnb_4bit(weight: torch.Tensor) -> bool:
    return "bitsandbytes" in sys.modules and type(weight).__name__ == "Params4bit"


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a quantized tensor this module dequantizes (torchao, bitsandbytes 4-bit)."""
    return _is_torchao(weight) or _is_bnb_4bit(weight)


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """W as a dense float tensor of its shape: the weight itself, or a per-call dequantized copy."""
    if type(weight) is nn.Parameter or type(weight) is torch.Tensor:  # the common case, first
        return weight
    if _is_torchao(weight):
        return weight.dequantize()
    if _is_bnb_4bit(weight):  # bitsandbytes is imported already (never by pst: an optional package)
        return sys.modules["bitsandbytes"].functional.dequantize_4bit(weight.data, weight.quant_state)
    return weight  # e.g. an FSDP DTensor: dense already


def row_reader(weight: torch.Tensor, transposed: bool = False) -> Callable[[slice], torch.Tensor]:
    """W's rows, in output x input orientation, a range at a time: views of a plain weight, a
    quantized one dequantized range by range, so that a layer working in row chunks never holds
    the whole dequantized matrix. For one pass: it may keep what all ranges share (bitsandbytes'
    dequantized block scales). The ranges give exactly the rows of :func:`dequantized`."""
    plain = type(weight) is nn.Parameter or type(weight) is torch.Tensor  # the common case, first (and traceable)
    if plain or transposed or not is_quantized(weight):  # (quantized modules are nn.Linear, never Conv1D)
        oriented = dequantized(weight)
        return (oriented.t() if transposed else oriented).__getitem__
    if _is_torchao(weight):  # its weight-only tensors slice by rows, scales with them
        return lambda rows: weight[rows].dequantize()
    return _Bnb4bitRows(weight)


class _Bnb4bitRows:
    """Rows of a bitsandbytes 4-bit W whose rows are whole blocks (k a multiple of the block size,
    as every LLM width is): its packed entries and block scales are then row-major, a range of rows
    is a range of each, and dequantizes alone (bitsandbytes' own ``dequantize_4bit`` on a
    sub-state); other shapes are dequantized whole, once. No package dequantizes part of a 4-bit
    tensor, hence the code."""

    def __init__(self, weight: torch.Tensor) -> None:
        functional = sys.modules["bitsandbytes"].functional
        state = weight.quant_state
        absmax = state.absmax
        if state.nested:  # the block scales are themselves quantized: dequantized once, as dequantize_4bit does
            absmax = (functional.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
        self.weight, self.state, self.absmax, self.functional = weight, state, absmax, functional
        self.columns = state.shape[1]
        self.whole = None

    def __call__(self, rows: slice) -> torch.Tensor:
        start, stop, _ = rows.indices(self.state.shape[0])
        size = self.state.blocksize
        if self.columns % size:
            if self.whole is None:
                self.whole = dequantized(self.weight)
            return self.whole[start:stop]
        blocks = self.columns // size
        part = type(self.state)(absmax=self.absmax[start * blocks : stop * blocks],
                                shape=torch.Size((stop - start, self.columns)), code=self.state.code, blocksize=size,
                                quant_type=self.state.quant_type, dtype=self.state.dtype)
        packed = self.weight.data.view(-1)[start * self.columns // 2 : stop * self.columns // 2]
        return self.functional.dequantize_4bit(packed, part)


def float_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype W computes in: a packed 4-bit weight is stored as uint8."""
    return weight.quant_state.dtype if _is_bnb_4bit(weight) else weight.dtype


def dense_shape(weight: torch.Tensor) -> torch.Size:
    """W's shape as stored by its module (a packed 4-bit weight is (n k / 2, 1))."""
    return weight.quant_state.shape if _is_bnb_4bit(weight) else weight.shape


def check_base(module: nn.Module, trains_weight: bool = False) -> None:
    """Raise ``TypeError`` naming the class unless the layer can read ``module.weight`` as a dense float W
    (and, for ``trains_weight`` methods, train it: a quantized W cannot)."""
    weight = module.weight
    kind = f"{type(module).__module__}.{type(module).__name__}"
    if trains_weight and is_quantized(weight):
        raise TypeError(
            f"{kind} holds a quantized {type(weight).__name__}, which cannot train: over a quantized base use a method "
            "that freezes W ('pst', 'lora')"
        )
    if _is_bnb_4bit(weight):
        if weight.quant_state is None:
            raise TypeError(f"{kind} is not quantized yet: move the model to its device (model.to(device)) first")
        return
    if _is_torchao(weight):
        dense = dequantized(weight.detach())
        if dense.shape != weight.shape or not dense.is_floating_point():
            raise TypeError(
                f"{kind} holds a {type(weight).__name__} that does not dequantize to a float tensor of its shape; "
                f"supported quantized bases: {SUPPORTED_QUANTIZED}"
            )
        return
    if not weight.is_floating_point() or not _is_dense_tensor(weight):
        raise TypeError(
            f"{kind} holds its weight as a {type(weight).__name__} of dtype "
            f"{str(weight.dtype).removeprefix('torch.')}; the quantized bases supported are {SUPPORTED_QUANTIZED} "
            "(bitsandbytes Linear8bitLt, GPTQ, AWQ and HQQ modules are not); load the model in 4-bit "
            "(BitsAndBytesConfig(load_in_4bit=True)), quantize it with torchao, or load it in bf16"
        )


def _is_dense_tensor(weight: torch.Tensor) -> bool:
    """A plain tensor or Parameter, or an FSDP DTensor shard of one."""
    return type(weight) in (nn.Parameter, torch.Tensor) or type(weight).__name__ == "DTensor"


# -- keep-zeros --------------------------------------------------------------------------------


def support(oriented_weight: torch.Tensor) -> torch.Tensor:
    """The base's non-zeros, (n, k) bool: what keep-zeros never lets a weight grow back into."""
    return oriented_weight != 0


def base_pruned(support: torch.Tensor, layout, pattern: tuple[int, int] | None) -> list[int]:
    """Per block, the base zeros the selection prunes before any other entry (their score is -inf).

    Unstructured: all of the block's zeros. N:M: only the M - N candidates of a group can be
    pruned, so a group holding more zeros than that counts M - N (its other zeros stay zero
    because the mask is also ANDed with the support).
    """
    counts = []
    for block in range(layout.num_blocks):
        kept = layout.rows_of(support, block)
        # Counted without summing bools: a bool sum casts every entry to int64 first (8 bytes a weight).
        if pattern is None:
            counts.append(kept.numel() - int(torch.count_nonzero(kept)))
        else:
            n_kept, group = pattern
            zeros = group - kept.reshape(-1, group).view(torch.uint8).sum(1, dtype=torch.uint8)
            counts.append(sum(int(torch.count_nonzero(zeros >= j)) for j in range(1, group - n_kept + 1)))
    return counts


def keep_zeros_prunes(prunes: list[int], support: torch.Tensor, layout, pattern, scored: bool):
    """Per block, the entries to prune and whether that is only the base's zeros (nothing to select).

    ``prunes``: floor(p n k) of each block; ``scored``: whether the layer has a score to select
    further entries by (not at keep_zeros' default sparsity 0).
    """
    base = base_pruned(support, layout, pattern)
    counts = [max(prune, zeros) for prune, zeros in zip(prunes, base)]
    exact = [count == zeros for count, zeros in zip(counts, base)]
    if not all(exact) and not scored:
        raise ValueError(
            "the sparsity asks a keep_zeros layer to prune beyond the base's zeros, but it was sparsified at "
            "sparsity 0, which keeps exactly the base's zeros (no score); use PSTConfig(keep_zeros=True, sparsity=p) "
            "to prune further"
        )
    return counts, exact
