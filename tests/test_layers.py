"""The sparse layer against the reference implementation: forward, every gradient, mask counts."""
import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from pst import PSTConfig, SparseLayer
from pst.fused import BlockLayout
from reference import block_rows, reference_mask, reference_output

SPARSITIES = [0.0, 0.5, 0.9, 0.99]
METHODS = ["pst", "magnitude", "movement", "lora"]


def make_layer(kind, n, k, method="pst", blocks=1, seed=0, **config):
    torch.manual_seed(seed)
    base = nn.Linear(k, n) if kind == "linear" else Conv1D(n, k)
    nn.init.normal_(base.weight)
    nn.init.normal_(base.bias)
    base = base.double()
    layer = SparseLayer(base, PSTConfig(method=method, **config), blocks=blocks)
    with torch.no_grad():  # non-zero V, B, R, C, scores so every term is exercised
        for p in layer.method_parameters():
            p.normal_()
    for p in layer.parameters():
        p.requires_grad_(True)
    return layer


def leaves_for_reference(layer):
    params = {}
    w = layer.weight.detach().t() if layer.transposed else layer.weight.detach()
    params["weight_oi"] = w.clone().requires_grad_(True)
    params["bias"] = layer.bias.detach().clone().requires_grad_(True)
    for name in ("U", "V", "A", "B", "R", "C", "scores"):
        p = getattr(layer, name)
        if p is not None:
            params[name] = p.detach().clone().requires_grad_(True)
    return params


def check_against_reference(layer, batch_shape=(3, 4)):
    torch.manual_seed(1)
    x = torch.randn(*batch_shape, layer.in_features, dtype=torch.float64)
    x_fast, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    params = leaves_for_reference(layer)
    y_fast = layer(x_fast)
    y_ref = reference_output(x_ref, layer, params)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(y_ref)
    (y_fast * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    weight_grad = layer.weight.grad.t() if layer.transposed else layer.weight.grad
    if layer.spec.trains_pretrained:
        torch.testing.assert_close(weight_grad, params["weight_oi"].grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.bias.grad, params["bias"].grad, rtol=1e-9, atol=1e-9)
    for name in ("U", "V", "A", "B", "R", "C", "scores"):
        p = getattr(layer, name)
        if p is not None:
            torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(6, 10), (17, 9)])
def test_forward_and_gradients_match_reference(kind, sparsity, method, shape):
    layer = make_layer(kind, *shape, method=method)
    layer.sparsity = sparsity
    check_against_reference(layer)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("rows", [8, 3], ids=["own-bytes", "shared-bytes"])  # 3 x 10 entries end mid-byte
def test_fused_blocks_match_reference(kind, sparsity, rows):
    layer = make_layer(kind, 3 * rows, 10, blocks=3)
    layer.sparsity = sparsity
    check_against_reference(layer, batch_shape=(5,))
    assert (layer._block_bits(1) is None) == (rows == 3)


# q 16 rows with k, v 4 rows each (grouped-query attention); per-head interleaved q, k, v (GPT-NeoX);
# interleaved unequal blocks (a multi-query layout: 4 heads of q per k and v head).
LAYOUTS = [BlockLayout((16, 4, 4)), BlockLayout((2, 2, 2), repeats=4), BlockLayout((4, 1, 1), repeats=4)]


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["unequal", "interleaved", "interleaved-unequal"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_unequal_and_interleaved_blocks_match_reference(kind, layout, method, sparsity):
    layer = make_layer(kind, 24, 12, method=method, blocks=layout)
    layer.sparsity = sparsity
    check_against_reference(layer, batch_shape=(5,))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["unequal", "interleaved", "interleaved-unequal"])
def test_each_block_mask_is_the_top_k_of_its_own_score(layout):
    layer = make_layer("linear", 24, 12, blocks=layout)
    layer.sparsity = 0.6
    kept, score = layer.effective_weight() != 0, layer.score()
    for block in range(layout.num_blocks):
        rows = block_rows(layout.sizes, layout.repeats, block)
        assert torch.equal(kept[rows], reference_mask(score[rows], 0.6).bool())
        assert int((~kept[rows]).sum()) == math.floor(0.6 * len(rows) * 12 + 1e-6)


def test_fused_blocks_have_their_own_v_b_c_and_per_row_u_a_r():
    layer = make_layer("linear", 24, 12, blocks=LAYOUTS[0])
    assert layer.V.shape == (3, 8, 12) and layer.B.shape == (3, 8, 12) and layer.C.shape == (3, 12)
    assert layer.U.shape == (24, 8) and layer.A.shape == (24, 8) and layer.R.shape == (24,)


@pytest.mark.parametrize(
    "ablation",
    [dict(score_magnitude=False), dict(score_low_rank=False), dict(score_structured=False),
     dict(alpha1=0.0), dict(alpha2=0.0), dict(beta=0.5, alpha1=2.0, alpha2=0.3, weight_rank=3, score_rank=5)],
)
def test_ablations_match_reference(ablation):
    layer = make_layer("linear", 12, 20, **ablation)
    layer.sparsity = 0.7
    check_against_reference(layer)


def test_large_matrix_uses_the_fast_selection_and_still_matches():
    layer = make_layer("linear", 300, 256)  # 76,800 entries: the bracketed selection path
    layer.sparsity = 0.9
    check_against_reference(layer, batch_shape=(4,))


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9, 0.99])
def test_exact_number_of_zeros_per_block(blocks, sparsity):
    layer = make_layer("conv1d", 3 * 40, 30, blocks=blocks)
    layer.sparsity = sparsity
    effective = layer.effective_weight().view(blocks, -1)
    expected = math.floor(sparsity * effective.shape[1] + 1e-6)
    assert ((effective == 0).sum(dim=1) == expected).all()


def test_exact_zeros_with_tied_scores():
    layer = make_layer("linear", 20, 30, method="movement")
    with torch.no_grad():
        layer.scores.zero_()  # every score tied (movement pruning's initial state)
        layer.scores[:5] = 1.0
    layer.sparsity = 0.5
    assert int((layer.effective_weight() == 0).sum()) == 300


def test_at_sparsity_zero_pst_equals_lora():
    pst_layer = make_layer("linear", 8, 12, method="pst", seed=3)
    lora_layer = make_layer("linear", 8, 12, method="lora", seed=3)
    with torch.no_grad():
        lora_layer.U.copy_(pst_layer.U)
        lora_layer.V.copy_(pst_layer.V)
    x = torch.randn(4, 12, dtype=torch.float64)
    expected = x @ (pst_layer.weight + pst_layer.U @ pst_layer.V).t() + pst_layer.bias
    torch.testing.assert_close(pst_layer(x), expected)
    torch.testing.assert_close(lora_layer(x), expected)


def test_weight_is_not_copied_and_keeps_its_name():
    base = nn.Linear(4, 3)
    layer = SparseLayer(base, PSTConfig())
    assert layer.weight is base.weight and layer.bias is base.bias
    names = set(dict(layer.named_parameters()))
    assert {"weight", "bias", "U", "V", "A", "B", "R", "C"} == names
    assert layer.U.shape == (3, 8) and layer.V.shape == (8, 4) and layer.A.shape == (3, 8)
    assert layer.B.shape == (8, 4) and layer.R.shape == (3,) and layer.C.shape == (4,)


def test_conv1d_parameters_are_output_by_input():
    layer = SparseLayer(Conv1D(6, 4), PSTConfig())  # Conv1D(nf=out, nx=in): weight is 4 x 6
    assert layer.U.shape == (6, 8) and layer.V.shape == (8, 4) and layer.C.shape == (4,)


def test_initialisation_starts_as_magnitude_pruning():
    layer = SparseLayer(nn.Linear(40, 30), PSTConfig())
    assert torch.count_nonzero(layer.V) == 0 and torch.count_nonzero(layer.B) == 0
    assert torch.count_nonzero(layer.R) == 0 and torch.count_nonzero(layer.C) == 0
    assert layer.U.std() > 0.5 and layer.A.std() > 0.5
    layer.sparsity = 0.5
    kept = layer.effective_weight() != 0
    threshold = layer.weight.abs().flatten().kthvalue(600).values
    assert torch.equal(kept, layer.weight.abs() > threshold)


def test_layout_must_cover_the_rows():
    with pytest.raises(ValueError, match="covers 12 rows, the module has 24"):
        SparseLayer(nn.Linear(4, 24), PSTConfig(), blocks=BlockLayout((4, 8)))
    with pytest.raises(ValueError, match="cannot be split into 5 fused blocks"):
        SparseLayer(nn.Linear(4, 24), PSTConfig(), blocks=5)


def test_score_is_what_the_mask_is_selected_from():
    layer = make_layer("conv1d", 12, 10, method="movement")
    torch.testing.assert_close(layer.score(), layer.scores.detach())
    with pytest.raises(ValueError, match="no score term"):
        make_layer("linear", 4, 4, method="lora").score()


def test_unsupported_module_is_rejected():
    with pytest.raises(TypeError, match="Embedding"):
        SparseLayer(nn.Embedding(10, 4), PSTConfig())
