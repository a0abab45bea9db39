"""The reference path on matrices too large to hold whole: chunks of rows, same results, bounded temporaries.

``pst.layers._ROW_CHUNK_ENTRIES`` is lowered so that small layers take the path an LLM's
matrices take on a CPU (4M entries by default).
"""
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.pytorch_utils import Conv1D

import pst
from pst import layers, masking
from pst.fused import BlockLayout
from test_compile import forward_backward, sparse_layer
from test_layers import METHODS, check_against_reference, make_layer


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 128)  # 8 rows of 16 inputs


@pytest.fixture
def chunked_selections(monkeypatch):
    """Counts the selections made by chunks (a bracket that missed counts as none)."""
    made = []
    original = masking.keep_by_chunks

    def spy(*args, **kwargs):
        kept = original(*args, **kwargs)
        made.append(kept is not None)
        return kept

    monkeypatch.setattr(masking, "keep_by_chunks", spy)
    return made


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("blocks", [1, 3, BlockLayout((4, 2, 2), repeats=6)], ids=["plain", "fused", "interleaved"])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_chunked_forward_and_gradients_match_reference(small_chunks, kind, method, blocks, sparsity):
    layer = make_layer(kind, 45 if blocks == 1 else 48, 16, method=method, blocks=blocks)  # 45: a ragged last chunk
    assert len(layers._row_chunks(layer.out_features, 16)) == 6
    layer.sparsity = sparsity
    check_against_reference(layer, batch_shape=(3, 4))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("method", ["pst", "magnitude", "movement"])
@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.3), ("unstructured", 0.9), ("unstructured", 0.99),
                                               ("2:4", 0.3), ("2:4", 0.5)])
def test_chunked_selection_gives_the_whole_selection_mask(monkeypatch, chunked_selections, kind, method, pattern,
                                                          sparsity):
    whole = make_layer(kind, 45, 1536, method=method, pattern=pattern)
    whole.sparsity = sparsity
    expected = whole.mask()
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 1536 * 8)
    chunked = make_layer(kind, 45, 1536, method=method, pattern=pattern)
    chunked.sparsity = sparsity
    assert torch.equal(chunked.mask(), expected)
    assert chunked_selections == [True]
    assert int((~expected).sum()) == masking.num_pruned(sparsity, 45 * 1536)


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "fp32-under-bf16-autocast"])
def test_chunked_bf16_gradients_are_the_whole_ones(monkeypatch, autocast):
    """In bf16 the chunks round their products apart, so the gradients are close, not equal; the
    sums over chunks (V, B, C) accumulate in fp32 and every gradient comes back in its parameter's dtype."""
    def run():
        layer = make_layer("linear", 64, 48)
        layer = layer.float() if autocast else layer.to(torch.bfloat16)
        layer.sparsity = 0.7
        x = torch.randn(2, 5, 48, dtype=layer.weight.dtype, generator=torch.Generator().manual_seed(2))
        x.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.float().square().sum().backward()
        return [y, x.grad] + [p.grad for p in (layer.bias, layer.U, layer.V, layer.A, layer.B, layer.R, layer.C)]

    whole = run()
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 48 * 8)
    for got, expected in zip(run(), whole):
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got.float(), expected.float(), rtol=0.03, atol=0.03 * expected.abs().max().item())


def test_chunked_layer_takes_a_non_contiguous_input(monkeypatch):
    def run():
        layer = make_layer("linear", 45, 16)
        layer.sparsity = 0.6
        x = torch.randn(4, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        x = x.transpose(0, 1).requires_grad_(True)  # (3, 4, 16), not contiguous
        layer(x).square().sum().backward()
        return [x.grad] + [p.grad for p in layer.method_parameters()]

    whole = run()
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 128)
    for got, expected in zip(run(), whole):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_chunked_selection_breaks_ties_as_the_whole_one(monkeypatch, chunked_selections):
    def tied_layer():
        layer = make_layer("linear", 40, 2048, method="magnitude")
        with torch.no_grad():  # four distinct magnitudes: whole blocks of ties at every threshold
            layer.weight.copy_(torch.randint(1, 5, layer.weight.shape, generator=torch.Generator().manual_seed(3)))
        layer.sparsity = 0.55
        return layer

    expected = tied_layer().mask()
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 2048 * 8)
    assert torch.equal(tied_layer().mask(), expected)
    assert chunked_selections == [True]


def test_a_missed_bracket_selects_the_matrix_whole(small_chunks, monkeypatch, chunked_selections):
    layer = make_layer("linear", 45, 16)
    layer.sparsity = 0.6
    expected = layer.mask().clone()
    # A bracket far above every score: all entries fall below it, so the count cannot be found inside.
    monkeypatch.setattr(masking, "_bracket", lambda sample, k, m: (sample.max() + 1, sample.max() + 2))
    layer.invalidate()
    assert torch.equal(layer.mask(), expected)
    assert chunked_selections == [True, False]


class _LargestAllocation(TorchDispatchMode):
    """The most bytes any op allocates: outputs sharing no storage with its inputs (not views)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t).data_ptr() for t in pytree.tree_leaves((args, kwargs)) if _storage(t) is not None}
        for tensor in pytree.tree_leaves(out):
            storage = _storage(tensor)
            if storage is not None and storage.data_ptr() not in inputs:
                self.largest = max(self.largest, storage.nbytes())
        return out


def _storage(tensor):
    """A plain tensor's storage; ``None`` for anything else (a quantized wrapper holds none of its own:
    its inner tensors' ops are seen on their own)."""
    if not isinstance(tensor, torch.Tensor) or type(tensor) not in (torch.Tensor, nn.Parameter):
        return None
    return tensor.untyped_storage()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_temporary_is_larger_than_a_chunk(monkeypatch, dtype):
    """Mask selection, forward and backward of a 2048 x 1024 PST layer held in ``dtype``, in 8
    chunks of 262,144 entries: no allocation exceeds a chunk's entries at 4 bytes each (the
    sample's positions and, at sparsity 0.9, the bracket's entries stay below it), where the
    whole path allocates n x k ones (a 0/1 mask in W's dtype among them)."""
    n, k, chunk = 2048, 1024, 262144
    layer = make_layer("linear", n, k).to(dtype)
    layer.weight.requires_grad_(False)  # as PST trains it: a gradient of W would be n x k by nature
    layer.sparsity = 0.9
    x = torch.randn(4, k, dtype=dtype, requires_grad=True)
    whole = _LargestAllocation()
    with whole:
        layer(x).sum().backward()
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", chunk)
    layer.invalidate()
    chunked = _LargestAllocation()
    with chunked:
        layer(x).sum().backward()
    assert whole.largest >= n * k * dtype.itemsize
    assert chunked.largest <= chunk * 4


@pytest.mark.parametrize("module", [nn.Linear(16, 45), Conv1D(48, 16)], ids=["linear", "fused-conv1d"])
def test_a_chunked_layer_compiles_with_fullgraph_and_matches_eager(small_chunks, module):
    layer = sparse_layer(module)
    assert len(layers._row_chunks(layer.out_features, 16)) == 6
    x = torch.randn(3, 5, 16)
    pst.refresh_masks(layer)
    expected = forward_backward(layer, x)
    got = forward_backward(torch.compile(layer, fullgraph=True, backend="aot_eager"), x)  # any break raises
    torch.testing.assert_close(got[0], expected[0])
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e)
