"""keep_zeros: fine-tuning a checkpoint that is already sparse keeps every zero it has.

The bases are a tiny LLaMA (and GPT-2, whose Conv1D stores W transposed) pruned by magnitude to
50% unstructured or 2:4, as SparseGPT or Wanda would leave them; training uses a large AdamW
learning rate so that U V really moves every weight it can.
"""
import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import pst
from tiny_decoders import VOCAB, causal_lm, token_batch


def _oriented(module):
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


@torch.no_grad()
def prune_by_magnitude(model, pattern="unstructured", sparsity=0.5):
    """Zero the smallest weights of every block projection in place; returns {name: zeros} (output x input)."""
    zeros = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or not (".layers." in name or ".h." in name):
            continue
        w = _oriented(module)
        if pattern == "2:4":
            groups = w.reshape(-1, 4)
            smallest = groups.abs().argsort(dim=1, stable=True)[:, :2]
            groups.scatter_(1, smallest, 0.0)
        else:
            threshold = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
            w[w.abs() <= threshold] = 0.0
        zeros[name] = (w == 0).clone()
    return zeros


def train(model, steps=4, lr=0.05, autocast=False):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = token_batch()
    losses = []
    model.train()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def logits(model):
    return model(**token_batch()).logits


def assert_zeros_kept(model, zeros, exactly=True):
    for name, base_zeros in zeros.items():
        w = _oriented(model.get_submodule(name))
        assert not w[base_zeros].any(), f"{name}: a zero of the base grew back"
        if exactly:
            assert torch.equal(w == 0, base_zeros), f"{name}: pruned entries beyond the base's zeros"


def sparse_llama(pattern="unstructured", dtype=torch.float32):
    model = causal_lm("llama").to(dtype)
    return model, prune_by_magnitude(model, pattern)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_training_and_merge_keep_exactly_the_base_zeros(pattern):
    model, zeros = sparse_llama(pattern)
    original = {name: _oriented(model.get_submodule(name)).detach().clone() for name in zeros}
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    losses = train(model)
    assert losses[-1] < losses[0]
    trained = logits(model)
    pst.merge(model)
    assert torch.allclose(logits(model), trained, atol=1e-5)
    assert_zeros_kept(model, zeros)
    moved = [float((_oriented(model.get_submodule(n)).detach() - original[n]).abs().max()) for n in zeros]
    assert min(moved) > 0.05, "U V did not move the kept weights: the test would not see a zero growing back"
    if pattern == "2:4":
        assert all(pst.is_n_m_sparse(model.get_submodule(name).weight, 2, 4) for name in zeros)


def test_only_u_and_v_train_and_the_mask_is_the_support():
    model, zeros = sparse_llama()
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    layers = dict(pst.sparse_layers(model))
    for layer in layers.values():
        assert (layer.A, layer.B, layer.R, layer.C) == (None, None, None, None)
        assert [p.shape for p in layer.method_parameters()] == [layer.U.shape, layer.V.shape]
    counts = pst.trainable_parameters(model)
    assert counts.added == counts.trainable == sum(l.U.numel() + l.V.numel() for l in layers.values())
    for name, layer in layers.items():
        assert torch.equal(layer.mask(), ~zeros[name])


def test_a_dense_base_stays_dense():
    model = causal_lm("llama")
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    assert all(layer.mask().all() for _, layer in pst.sparse_layers(model))


def test_a_higher_target_prunes_further_on_top_of_the_base_zeros():
    model, zeros = sparse_llama()
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True, sparsity=0.7))
    layers = dict(pst.sparse_layers(model))
    assert all(layer.A is not None for layer in layers.values())  # the paper's score picks what goes next
    pst.set_sparsity(model, 0.3)  # below the base's 50%: exactly the base's zeros
    train(model, steps=1)
    for name, layer in layers.items():
        assert torch.equal(layer.effective_weight() == 0, zeros[name])
    pst.set_sparsity(model, 0.7)
    train(model, steps=2)
    trained = logits(model)
    pst.merge(model)
    assert torch.allclose(logits(model), trained, atol=1e-5)
    assert_zeros_kept(model, zeros, exactly=False)
    for name in zeros:
        w = model.get_submodule(name).weight
        assert int((w == 0).sum()) == math.floor(0.7 * w.numel())


def test_an_n_m_target_on_an_unstructured_base_keeps_every_zero():
    """Groups holding more than M - N base zeros keep all of them; every group ends 2:4."""
    model, zeros = sparse_llama()
    assert any(((~z).reshape(-1, 4).sum(1) < 2).any() for z in zeros.values())  # such groups exist
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True, pattern="2:4", sparsity=0.5))
    pst.set_sparsity(model, 0.5)  # where the schedule ends
    train(model, steps=2)
    pst.merge(model)
    assert_zeros_kept(model, zeros, exactly=False)
    assert all(pst.is_n_m_sparse(model.get_submodule(name).weight, 2, 4) for name in zeros)


def test_fused_gpt2_conv1d():
    """Conv1D holds W as input x output and c_attn fuses q, k, v: zeros are kept block by block."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    zeros = prune_by_magnitude(model)
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True, sparsity=0.6))
    for name, layer in pst.sparse_layers(model):  # at the schedule's start: exactly the base's zeros
        assert torch.equal(layer.mask(), ~zeros[name])
    pst.set_sparsity(model, 0.6)
    train(model, steps=2)
    pst.merge(model)
    assert_zeros_kept(model, zeros, exactly=False)
    for name in zeros:
        w = _oriented(model.get_submodule(name))
        if name.endswith("c_attn"):  # each of q, k, v at 60% on its own
            assert [int((b == 0).sum()) for b in w.chunk(3)] == [math.floor(0.6 * b.numel()) for b in w.chunk(3)]


def test_bf16_model_and_autocast():
    model, zeros = sparse_llama("2:4", dtype=torch.bfloat16)
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    train(model, steps=3)
    trained = logits(model)
    pst.merge(model)
    assert torch.equal(logits(model), trained)
    assert_zeros_kept(model, zeros)

    model, zeros = sparse_llama()
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    train(model, steps=3, autocast=True)
    pst.merge(model)
    assert_zeros_kept(model, zeros)


def test_adapter_round_trip_stores_no_mask(tmp_path):
    model, zeros = sparse_llama("2:4")
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    train(model, steps=2)
    trained = logits(model)
    pst.save_adapter(model, tmp_path)
    names = set(pst.adapter_state_dict(model))
    assert names and all(name.rsplit(".", 1)[1] in ("U", "V") for name in names)

    fresh, _ = sparse_llama("2:4")  # the same sparse base, loaded again
    pst.load_adapter(fresh, tmp_path)
    assert fresh.pst_config.keep_zeros
    assert torch.allclose(logits(fresh), trained, atol=1e-6)
    pst.merge(fresh)
    assert_zeros_kept(fresh, zeros)


def test_bad_input():
    with pytest.raises(ValueError, match="keep_zeros needs method='pst'"):
        pst.PSTConfig(method="lora", keep_zeros=True)
    with pytest.raises(ValueError, match="keep_zeros must be True or False"):
        pst.PSTConfig(keep_zeros="yes")
    assert pst.PSTConfig(keep_zeros=True).sparsity == 0.0
    model, _ = sparse_llama()
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    pst.set_sparsity(model, 0.8)
    with pytest.raises(ValueError, match="prune beyond the base.s zeros"):
        logits(model)


def test_base_zeros_counted_per_block_and_per_n_m_group():
    from pst.base_weights import base_pruned
    from pst.fused import BlockLayout

    support = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 1],    # block 0: groups with 0 and 3 zeros
                            [0, 1, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)  # block 1: groups with 2 and 4 zeros
    layout = BlockLayout((1, 1))
    assert base_pruned(support, layout, None) == [3, 6]
    assert base_pruned(support, layout, (2, 4)) == [0 + 2, 2 + 2]  # at most M - N candidates per group
    assert base_pruned(support, layout, (3, 4)) == [0 + 1, 1 + 1]
