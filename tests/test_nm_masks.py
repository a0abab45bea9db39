"""N:M masks (PSTConfig(pattern="2:4")): the paper's score, N of every M weights along the input."""
import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import pst
from pst import PSTConfig
from pst.fused import BlockLayout
from test_layers import check_against_reference, make_layer

LAYOUTS = [1, 3, BlockLayout((2, 2, 2), repeats=4)]


def groups_of(weight_oi: torch.Tensor, group: int) -> torch.Tensor:
    """Zeros per group of ``group`` consecutive inputs, (n, k / group)."""
    return (weight_oi == 0).view(weight_oi.shape[0], -1, group).sum(dim=2)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("blocks", LAYOUTS, ids=["unfused", "fused", "interleaved"])
@pytest.mark.parametrize(("pattern", "sparsity"), [("2:4", 0.3), ("2:4", 0.5), ("1:4", 0.75), ("3:6", 0.2)])
@pytest.mark.parametrize("method", ["pst", "magnitude", "movement"])
def test_nm_masks_match_reference(kind, blocks, pattern, sparsity, method):
    layer = make_layer(kind, 24, 12, method=method, blocks=blocks, pattern=pattern, sparsity=0.5)
    layer.sparsity = sparsity
    check_against_reference(layer, batch_shape=(5,))


@pytest.mark.parametrize("blocks", LAYOUTS, ids=["unfused", "fused", "interleaved"])
def test_target_sparsity_leaves_exactly_m_minus_n_zeros_in_every_group(blocks):
    layer = make_layer("conv1d", 24, 16, blocks=blocks, pattern="2:4", sparsity=0.5)
    layer.sparsity = 0.5
    assert (groups_of(layer.effective_weight(), 4) == 2).all()
    plain = layer.to_plain_module()  # Conv1D stores inputs x outputs: groups run along dim 0
    assert (groups_of(plain.weight.t(), 4) == 2).all()


@pytest.mark.parametrize("sparsity", [0.05, 0.2, 0.33, 0.45])
def test_ramp_prunes_exactly_floor_p_n_k_per_block_and_at_most_m_minus_n_per_group(sparsity):
    layer = make_layer("linear", 24, 16, blocks=BlockLayout((12, 6, 6)), pattern="2:4", sparsity=0.5)
    layer.sparsity = sparsity
    effective = layer.effective_weight()
    for rows in (slice(0, 12), slice(12, 18), slice(18, 24)):
        block = effective[rows]
        assert int((block == 0).sum()) == math.floor(sparsity * block.numel() + 1e-6)
    assert (groups_of(effective, 4) <= 2).all()


def test_merged_model_is_exactly_two_four(tiny_model):
    model = pst.sparsify(tiny_model("gpt2"), PSTConfig(pattern="2:4", sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    pst.merge(model)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        weight = model.get_submodule(f"transformer.h.1.{name}").weight  # Conv1D: inputs x outputs
        assert (groups_of(weight.t(), 4) == 2).all(), name


def test_topk_strategy_gives_the_same_nm_masks(monkeypatch):
    layer = make_layer("linear", 24, 16, method="movement", blocks=3, pattern="2:4", sparsity=0.5)
    with torch.no_grad():
        layer.scores.copy_(torch.randint(0, 3, layer.scores.shape))  # many ties
    for sparsity in (0.2, 0.5):
        layer.sparsity = sparsity
        expected = layer.effective_weight()
        monkeypatch.setattr(pst.masking, "default_strategy", lambda device: "topk")
        layer.invalidate()
        assert torch.equal(layer.effective_weight(), expected)
        monkeypatch.undo()
        layer.invalidate()


def test_pattern_limits_are_checked_everywhere(tiny_model):
    with pytest.raises(ValueError, match=r"pattern 2:4 prunes at most 50%; got sparsity=0.9"):
        PSTConfig(pattern="2:4", sparsity=0.9)
    assert PSTConfig(pattern="2:4").sparsity == 0.5 and PSTConfig(pattern="1:4").sparsity == 0.75
    assert PSTConfig().sparsity == 0.9  # the paper's, for the unstructured pattern
    with pytest.raises(ValueError, match=r"prunes at most 50%; got initial_sparsity=0.6"):
        PSTConfig(pattern="2:4", sparsity=0.5, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="'unstructured' or 'N:M'"):
        PSTConfig(pattern="2of4")
    PSTConfig(method="lora", pattern="2:4")  # ignored, like sparsity, by methods that do not prune
    model = pst.sparsify(tiny_model("bert"), PSTConfig(pattern="2:4", sparsity=0.5))
    with pytest.raises(ValueError, match=r"prunes at most 50%; got sparsity=0.6"):
        pst.set_sparsity(model, 0.6)
    with pytest.raises(ValueError, match=r"cannot sparsify 0: pattern 2:4 groups 4 consecutive inputs; 6 input"):
        pst.sparsify(nn.Sequential(nn.Linear(6, 4)), PSTConfig(target_modules=["0"], pattern="2:4", sparsity=0.5))
    with pytest.raises(ValueError, match="groups 8 consecutive inputs"):
        pst.layers.SparseLayer(Conv1D(8, 12), PSTConfig(pattern="4:8", sparsity=0.5))
