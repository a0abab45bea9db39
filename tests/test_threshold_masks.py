"""``mask_storage="threshold"``: no per-weight state, the same masks, outputs and gradients as the bits.

Each pair of layers below is built from the same seed, one keeping its mask as bits and one as a
threshold, and must agree exactly: the threshold's mask is recomputed in every pass from the score,
so any difference between how the selection and the passes compute S would show as a flipped entry.
"""
import math

import pytest
import torch
from torch import nn

import pst
from pst import PSTConfig, layers, masking
from pst.layers import SparseLayer
from test_layers import check_against_reference, make_layer
from test_row_chunks import _LargestAllocation
from tiny_decoders import causal_lm, token_batch

PRUNING = ["pst", "magnitude", "movement"]


def pair(kind, n, k, method="pst", dtype=torch.float64, **config):
    bits = make_layer(kind, n, k, method=method, **config).to(dtype)
    threshold = make_layer(kind, n, k, method=method, mask_storage="threshold", **config).to(dtype)
    return bits, threshold


def tied(layer, values=4):
    """Few distinct magnitudes and no data-driven terms: whole blocks of ties at every threshold."""
    with torch.no_grad():
        layer.weight.copy_(torch.randint(1, values + 1, layer.weight.shape, generator=torch.Generator().manual_seed(3)))
        for p in (layer.V, layer.B, layer.R, layer.C):
            if p is not None:
                p.zero_()
    return layer


def run(layer, x, upstream):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * upstream).sum().backward()
    grads = [p.grad for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return y, x.grad, grads


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("method", PRUNING)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "row-chunks"])
def test_threshold_gives_the_bits_mask_outputs_and_gradients(monkeypatch, kind, method, sparsity, chunked):
    if chunked:  # the path an LLM's matrices take: 6 chunks, a ragged last one
        monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 128)
    bits, threshold = pair(kind, 45, 16, method)
    for layer in (bits, threshold):
        layer.sparsity = sparsity
    expected = bits.mask()
    assert torch.equal(threshold.mask(), expected)
    assert int((~expected).sum()) == masking.num_pruned(sparsity, 45 * 16)
    x, upstream = torch.randn(3, 4, 16, dtype=torch.float64), torch.randn(3, 4, 45, dtype=torch.float64)
    for got, want in zip(run(threshold, x, upstream), run(bits, x, upstream)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    check_against_reference(threshold)  # and against the autograd reference of the paper's formulas


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prune", [0, 1, 500, 999, 1000])
def test_a_threshold_keeps_what_keep_mask_keeps(dtype, prune):
    scores = torch.randint(0, 7, (1000,), generator=torch.Generator().manual_seed(prune)).to(dtype)  # ties
    expected = masking.keep_mask(scores.view(1, -1), prune)[0]
    threshold = masking.prune_threshold(scores, prune)
    assert torch.equal(threshold.keep(scores), expected)
    assert torch.equal(threshold.mask_(scores.clone()), expected.to(dtype))
    for start in (0, 3 * 64, 999):  # a chunk's share of it, from entry ``start`` on
        assert torch.equal(threshold.after(start).keep(scores[start:]), expected[start:])


@pytest.mark.parametrize("sparsity", [0.3, 0.55, 0.8])
@pytest.mark.parametrize("rows_per_chunk", [None, 8], ids=["whole", "row-chunks"])
def test_ties_are_pruned_lowest_index_first(monkeypatch, sparsity, rows_per_chunk):
    bits, threshold = (tied(layer) for layer in pair("linear", 40, 2048, "magnitude"))
    if rows_per_chunk:  # five chunks; the kept ties start inside one of them
        monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 2048 * rows_per_chunk)
    for layer in (bits, threshold):
        layer.sparsity = sparsity
    expected = bits.mask()
    assert torch.equal(threshold.mask(), expected)
    assert 0 < threshold._threshold.first_kept_tie < 40 * 2048  # the tie rule was exercised
    x = torch.randn(2, 2048, dtype=torch.float64)
    torch.testing.assert_close(threshold(x), bits(x), rtol=0, atol=0)


def test_a_missed_bracket_selects_the_matrix_whole(monkeypatch):
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 128)
    bits, threshold = pair("linear", 45, 16)
    for layer in (bits, threshold):
        layer.sparsity = 0.6
    # A bracket far above every score: all entries fall below it, so the count cannot be found inside.
    monkeypatch.setattr(masking, "_bracket", lambda sample, k, m: (sample.max() + 1, sample.max() + 2))
    assert torch.equal(threshold.mask(), bits.mask())


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "fp32-under-bf16-autocast"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "row-chunks"])
def test_bf16_outputs_and_gradients_equal_the_bits_ones(monkeypatch, autocast, chunked):
    if chunked:
        monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", 48 * 8)
    dtype = torch.float32 if autocast else torch.bfloat16
    bits, threshold = pair("linear", 64, 48, dtype=dtype)
    for layer in (bits, threshold):
        layer.sparsity = 0.7
    assert torch.equal(threshold.mask(), bits.mask())
    x, upstream = torch.randn(2, 5, 48, dtype=dtype), torch.randn(2, 5, 64, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got, want = run(threshold, x, upstream), run(bits, x, upstream)
    for g, w in zip(got[:2], want[:2]):
        assert g.dtype == w.dtype and torch.equal(g, w)
    for g, w in zip(got[2], want[2]):
        assert (g is None and w is None) or torch.equal(g, w)


def test_no_state_per_weight_and_temporaries_within_a_chunk(monkeypatch):
    """Nothing of the mask outlives a pass, and (chunked) no pass allocates more than a chunk holds
    at four bytes per entry, the selection included."""
    n, k, chunk = 2048, 1024, 262144
    monkeypatch.setattr(layers, "_ROW_CHUNK_ENTRIES", chunk)
    layer = make_layer("linear", n, k, mask_storage="threshold").float()
    layer.weight.requires_grad_(False)
    layer.sparsity = 0.9
    x = torch.randn(4, k, requires_grad=True)
    largest = _LargestAllocation()
    with largest:
        layer(x).sum().backward()
    assert largest.largest <= chunk * 4
    assert layer._mask_bits is None and isinstance(layer._threshold, masking.Threshold)
    state = [t for t in (*layer.buffers(), *vars(layer).values()) if isinstance(t, torch.Tensor)]
    assert not state  # no bits and no table to unpack them


def test_a_model_trains_to_the_same_masks_and_losses():
    """A tiny LLaMA through the schedule's ramp, AdamW, both storages from the same seed."""
    def train(storage):
        model = causal_lm("llama", seed=0)
        torch.manual_seed(1)
        pst.sparsify(model, PSTConfig(sparsity=0.8, mask_storage=storage))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        scheduler = pst.SparsityScheduler(model, total_steps=6)
        batch = token_batch(batch=4, length=10, seed=3)
        losses = []
        for _ in range(6):
            loss = model(**batch, labels=batch["input_ids"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(loss.item())
        return losses, {name: layer.mask() for name, layer in pst.sparse_layers(model)}

    bits_losses, bits_masks = train("bits")
    losses, masks = train("threshold")
    assert losses == bits_losses
    assert masks.keys() == bits_masks.keys()
    for name, mask in masks.items():
        assert torch.equal(mask, bits_masks[name]), name
        assert int((~mask).sum()) == math.floor(0.8 * mask.numel() + 1e-6), name


@pytest.mark.parametrize("setting, match", [
    ({"mask_storage": "bytes"}, "mask_storage must be one of"),
    ({"mask_storage": "threshold", "pattern": "2:4"}, "neither pattern"),
    ({"mask_storage": "threshold", "keep_zeros": True}, "neither pattern"),
])
def test_settings_it_cannot_keep_are_refused(setting, match):
    with pytest.raises(ValueError, match=match):
        PSTConfig(**setting)


def test_a_fused_module_is_refused_by_name():
    with pytest.raises(ValueError, match=r"qkv_proj.*fuses 3"):
        pst.sparsify(causal_lm("phi3", seed=0), PSTConfig(mask_storage="threshold"))
    # Taken as whole matrices, as the user may choose to, they are one matrix each.
    pst.sparsify(causal_lm("phi3", seed=0), PSTConfig(mask_storage="threshold", fused_modules={}))


def test_compiling_a_threshold_layer_is_refused():
    layer = SparseLayer(nn.Linear(16, 8), PSTConfig(mask_storage="threshold"))
    layer.sparsity = 0.5
    with pytest.raises(Exception, match="runs eagerly"):
        torch.compile(layer, backend="eager", fullgraph=True)(torch.randn(2, 16))


def test_a_capturable_schedule_is_refused():
    model = pst.sparsify(causal_lm("llama", seed=0), PSTConfig(mask_storage="threshold"))
    with pytest.raises(ValueError, match="capturable=True needs mask_storage='bits'"):
        pst.SparsityScheduler(model, total_steps=10, capturable=True)
