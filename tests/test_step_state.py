"""Masks once per optimizer step: reused by accumulation, checkpointing and eval, rebuilt when due."""
import pytest
import torch
from torch import nn

import pst
from pst import PSTConfig


@pytest.fixture
def selections(monkeypatch):
    """Counts stacked selections (one per group of same-shaped blocks per rebuild), with the
    sync-free strategy of accelerators: the CPU strategy selects matrix by matrix."""
    monkeypatch.setattr(pst.masking, "default_strategy", lambda device: "topk")
    calls = []
    original = pst.layers._select

    def counting(members, *args):
        calls.append(len(members))
        return original(members, *args)

    monkeypatch.setattr(pst.layers, "_select", counting)
    return calls


def sparse_bert(tiny_model, method="pst", sparsity=0.5, **config):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(method=method, **config))
    pst.set_sparsity(model, sparsity)
    return model


def masks(model):
    return {name: layer.effective_weight() != 0 for name, layer in pst.sparse_layers(model)}


def train_step(model, batch, optimizer, micro_batches=1):
    for _ in range(micro_batches):
        model(**batch, labels=torch.tensor([0, 2])).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


# Tiny BERT: 8 blocks of 32 x 32 (q, k, v, o) and 4 of 2048 entries (FFN in 64 x 32, out 32 x 64).
GROUPS = {1024: 8, 2048: 4}


def test_one_stacked_selection_per_group_per_step_with_gradient_accumulation(tiny_model, token_batch, selections):
    model = sparse_bert(tiny_model).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    for step in range(3):
        train_step(model, token_batch, optimizer, micro_batches=4)
        assert sorted(selections) == sorted(list(GROUPS.values()) * (step + 1))


def test_masks_follow_a_fused_optimizer_step(tiny_model, token_batch):
    # Fused AdamW updates parameters without bumping their version counters.
    model = sparse_bert(tiny_model, method="movement").train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=0.5, fused=True)
    before = masks(model)
    train_step(model, token_batch, optimizer)
    after = masks(model)
    pst.invalidate_masks(model)
    assert all(torch.equal(after[name], mask) for name, mask in masks(model).items())
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_grouped_masks_equal_masks_selected_matrix_by_matrix(tiny_model, selections):
    model = sparse_bert(tiny_model, sparsity=0.7)
    with torch.no_grad():
        for _, layer in pst.sparse_layers(model):
            for p in (layer.V, layer.B, layer.R, layer.C):
                p.normal_()
    grouped = masks(model)
    assert sorted(selections) == sorted(GROUPS.values())
    for _, layer in pst.sparse_layers(model):
        layer._peers = None
        layer.invalidate()
    assert all(torch.equal(grouped[name], mask) for name, mask in masks(model).items())
    assert len(selections) == 2 + sum(GROUPS.values())


@pytest.mark.parametrize("method", ["pst", "movement"])
def test_sync_free_strategy_gives_the_same_model_masks(tiny_model, monkeypatch, method):
    model = sparse_bert(tiny_model, method=method, sparsity=0.6)  # movement: every score tied at 0
    cpu = masks(model)
    monkeypatch.setattr(pst.masking, "default_strategy", lambda device: "topk")
    pst.invalidate_masks(model)
    assert all(torch.equal(cpu[name], mask) for name, mask in masks(model).items())


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_reuses_the_masks(tiny_model, token_batch, selections, use_reentrant):
    reference, model = sparse_bert(tiny_model).train(), sparse_bert(tiny_model).train()
    model.load_state_dict(reference.state_dict())
    if use_reentrant:  # reentrant checkpointing needs an input that requires grad
        model.enable_input_require_grads()
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    for m in (reference, model):
        m.config.hidden_dropout_prob = m.config.attention_probs_dropout_prob = 0.0
        for module in m.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    for m in (reference, model):
        m(**token_batch, labels=torch.tensor([0, 2])).loss.backward()
    assert sorted(selections) == sorted(list(GROUPS.values()) * 2)  # once per model, not again in the recomputation
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_evaluation_reuses_the_masks_and_training_resumes(tiny_model, token_batch, selections, no_grad):
    model = sparse_bert(tiny_model).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    train_step(model, token_batch, optimizer)
    model.eval()
    with no_grad():
        first = model(**token_batch).logits
        second = model(**token_batch).logits
    torch.testing.assert_close(first, second)
    model.train()
    model(**token_batch, labels=torch.tensor([0, 2])).loss.backward()  # masks built in eval, saved for backward
    assert len(selections) == 2 * len(GROUPS)


def test_masks_follow_load_state_dict_sparsity_and_in_place_edits(tiny_model, token_batch, selections):
    trained = sparse_bert(tiny_model, method="movement").train()
    train_step(trained, token_batch, torch.optim.AdamW(pst.optimizer_parameters(trained), lr=0.5))
    fresh = sparse_bert(tiny_model, method="movement")
    stale = masks(fresh)
    fresh.load_state_dict(trained.state_dict())
    assert all(torch.equal(masks(trained)[name], mask) for name, mask in masks(fresh).items())
    assert any(not torch.equal(stale[name], mask) for name, mask in masks(fresh).items())
    count = len(selections)
    masks(fresh)
    assert len(selections) == count  # nothing changed: nothing rebuilt
    pst.set_sparsity(fresh, 0.8)
    assert all(int((~mask).sum()) == int(0.8 * mask.numel()) for mask in masks(fresh).values())
    layer = fresh.bert.encoder.layer[0].attention.self.query
    before = layer.effective_weight() != 0
    with torch.no_grad():
        layer.scores.neg_()  # tracked: the version counter moves
    after = layer.effective_weight() != 0
    assert not torch.equal(after, before)
    layer.scores.data.neg_()  # not tracked: the mask is stale until invalidate_masks
    assert torch.equal(layer.effective_weight() != 0, after)
    pst.invalidate_masks(fresh)
    assert torch.equal(layer.effective_weight() != 0, before)


def test_backward_keeps_no_dense_float_matrix_but_the_parameters(tiny_model, token_batch):
    model = sparse_bert(tiny_model)
    layer = model.bert.encoder.layer[0].intermediate.dense
    parameters = {id(p) for p in layer.parameters()} | {id(b) for b in layer.buffers()}  # constants: not per weight
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(torch.randn(3, 32, requires_grad=True))
    large = [t for t in saved if t.numel() >= layer.weight.numel()]
    assert large and all(id(t) in parameters or t.dtype == torch.bool for t in large)


def test_a_data_parallel_replica_builds_its_own_masks(tiny_model):
    model = sparse_bert(tiny_model)
    layer = model.bert.encoder.layer[0].attention.self.query
    expected = layer.effective_weight()
    replica = layer._replicate_for_data_parallel()  # what nn.DataParallel does, then it sets broadcast copies
    for name in ("weight", "bias", "U", "V", "A", "B", "R", "C"):
        setattr(replica, name, getattr(layer, name).detach().clone())
    assert torch.equal(replica.effective_weight(), expected)
    assert layer._mask_bits.data_ptr() != replica._mask_bits.data_ptr()


@pytest.mark.parametrize("shape", [(4, 8), (3, 5), (1, 1), (7, 9), (64, 64)])
@pytest.mark.parametrize("offset", [0, 3])  # a view starting mid-word is packed from a copy
def test_masks_pack_into_one_bit_per_weight_and_back(shape, offset):
    numel = shape[0] * shape[1]
    keep = (torch.rand(numel + offset, generator=torch.Generator().manual_seed(numel)) > 0.5)[offset:].view(shape)
    keep.view(-1)[-8:] = True  # every bit of a byte set: the gather's top bit
    bits = torch.empty((numel + 7) // 8, dtype=torch.uint8)
    pst.layers.pack_mask(keep, out=bits)
    padded = torch.cat([keep.reshape(-1), torch.ones(-numel % 8, dtype=torch.bool)]).view(-1, 8)
    expected = (padded.to(torch.int64) << torch.arange(8)).sum(1)  # bit i of byte j is entry 8 j + i
    assert torch.equal(bits.to(torch.int64), expected)
    assert torch.equal(pst.layers.unpack_mask(bits, pst.layers.bit_table(torch.float32), *shape).bool(), keep)


def test_masks_pack_in_parts_the_same(monkeypatch):
    keep = torch.rand(100, 64, generator=torch.Generator().manual_seed(0)) > 0.3
    whole, parts = (torch.empty(800, dtype=torch.uint8) for _ in range(2))
    pst.layers.pack_mask(keep, out=whole)
    monkeypatch.setattr(pst.layers, "_PACK_BYTES", 48)  # ragged last part
    pst.layers.pack_mask(keep, out=parts)
    assert torch.equal(whole, parts)


def test_a_mask_is_one_bit_per_weight_rewritten_in_place(tiny_model, token_batch):
    model = sparse_bert(tiny_model).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    train_step(model, token_batch, optimizer)
    layers = [layer for _, layer in pst.sparse_layers(model)]
    where = [layer._mask_bits.data_ptr() for layer in layers]
    before = masks(model)
    for sparsity in (0.6, 0.7):
        pst.set_sparsity(model, sparsity)
        train_step(model, token_batch, optimizer)
    assert [layer._mask_bits.data_ptr() for layer in layers] == where  # never a new mask beside the old one
    assert all(layer._mask_bits.numel() * 8 == layer.weight.numel() for layer in layers)
    after = masks(model)
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_the_sparsity_travels_in_the_state_dict(tiny_model):
    trained = sparse_bert(tiny_model, sparsity=0.7)
    fresh = pst.sparsify(tiny_model("bert"), PSTConfig())
    assert all(layer.sparsity == 0.0 for _, layer in pst.sparse_layers(fresh))
    fresh.load_state_dict(trained.state_dict())
    assert all(layer.sparsity == 0.7 for _, layer in pst.sparse_layers(fresh))
    expected = masks(trained)
    assert all(torch.equal(mask, expected[name]) for name, mask in masks(fresh).items())


def test_a_layer_keeps_no_per_weight_state_but_its_mask_bits(tiny_model, token_batch):
    model = sparse_bert(tiny_model).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    train_step(model, token_batch, optimizer, micro_batches=2)
    for name, layer in pst.sparse_layers(model):
        parameters = {id(p) for p in layer.parameters()}
        held = [t for t in list(vars(layer).values()) + list(layer.buffers())
                if isinstance(t, torch.Tensor) and id(t) not in parameters]
        held_bytes = sum(t.numel() * t.element_size() for t in held)
        n, k = layer.out_features, layer.in_features
        table = layer.bit_table.numel() * layer.bit_table.element_size()  # 256 x 8, whatever the layer's size
        assert held_bytes <= n * k / 8 + 8 + layer.blocks * n * layer.weight.element_size() + table, name
