"""PST over quantized base weights: torchao weight-only int8 and int4 on CPU, tiny LLaMA.

torchao is optional (``pip install torchao``): its tests skip without it; the refusals always run
(bitsandbytes' own only where bitsandbytes is installed).
"""
import logging

import pytest
import torch
from torch import nn

import pst
from test_keep_zeros import prune_by_magnitude
from tiny_decoders import causal_lm, token_batch

try:
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    CONFIGS = {
        "int8": lambda: Int8WeightOnlyConfig(),
        "int4": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    }
except ImportError:
    CONFIGS = {"int8": None, "int4": None}
needs_torchao = pytest.mark.skipif(CONFIGS["int8"] is None, reason="torchao is not installed")


def _projection(module, name):
    return isinstance(module, nn.Linear) and ".layers." in name


def quantized_llama(bits="int8", dtype=torch.float32, sparse=False):
    model = causal_lm("llama").to(dtype)
    zeros = prune_by_magnitude(model) if sparse else None
    quantize_(model, CONFIGS[bits](), filter_fn=_projection)
    return model, zeros


def train(model, steps=4, lr=0.01):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = token_batch()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def logits(model):
    return model(**token_batch()).logits


@needs_torchao
@pytest.mark.parametrize("bits", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_at_sparsity_0_a_layer_equals_the_quantized_layer(bits, dtype):
    torch.manual_seed(0)
    quantized = nn.Sequential(nn.Linear(64, 32)).to(dtype)
    quantize_(quantized, CONFIGS[bits]())
    base = quantized[0]
    x = torch.randn(4, 64, dtype=dtype)
    with torch.no_grad():
        expected = base(x)
        layer = pst.SparseLayer(base, pst.PSTConfig(target_modules=["0"]))
        assert layer.weight is base.weight  # held as it is, no dense copy
        got = layer(x)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.dtype == dtype
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance)


@needs_torchao
@pytest.mark.parametrize("bits", sorted(CONFIGS))
def test_training_reaches_only_the_small_matrices_and_merge_writes_a_dense_sparse_model(bits, caplog):
    model, _ = quantized_llama(bits)
    quantized_type = type(model.model.layers[0].mlp.up_proj.weight)
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    layers = dict(pst.sparse_layers(model))
    assert all(type(layer.weight) is quantized_type for layer in layers.values())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    batch = token_batch()
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        assert with_grad and {name.rsplit(".", 1)[1] for name in with_grad} == {"U", "V", "A", "B", "R", "C"}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = logits(model)
    with caplog.at_level(logging.WARNING, logger="pst.export"):
        pst.merge(model)
    assert f"14 sparse layers had quantized base weights ({quantized_type.__name__}" in caplog.text
    assert torch.allclose(logits(model), trained, atol=1e-5)
    for name in layers:
        weight = model.get_submodule(name).weight
        assert type(weight) is nn.Parameter and weight.dtype == torch.float32
        assert int((weight == 0).sum()) == weight.numel() // 2


@needs_torchao
def test_bf16_quantized_base_merges_to_bf16():
    model, _ = quantized_llama("int8", torch.bfloat16)
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    losses = train(model, steps=4)
    assert losses[-1] < losses[0]
    trained = logits(model)
    pst.merge(model)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert type(weight) is nn.Parameter and weight.dtype == torch.bfloat16
    assert torch.equal(logits(model), trained)


@needs_torchao
def test_a_sparse_and_quantized_checkpoint_keeps_its_zeros():
    """The case LoRA cannot serve: a 50%-pruned model, quantized to int8, fine-tuned and merged sparse."""
    model, zeros = quantized_llama("int8", sparse=True)
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    train(model, steps=4, lr=0.05)
    trained = logits(model)
    pst.merge(model)
    assert torch.allclose(logits(model), trained, atol=1e-5)
    for name, base_zeros in zeros.items():
        assert torch.equal(model.get_submodule(name).weight == 0, base_zeros)


@needs_torchao
def test_adapter_round_trip_on_a_quantized_base(tmp_path):
    model, _ = quantized_llama("int4")
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    train(model, steps=2)
    trained = logits(model)
    pst.save_adapter(model, tmp_path)
    fresh, _ = quantized_llama("int4")
    pst.load_adapter(fresh, tmp_path)
    assert torch.allclose(logits(fresh), trained, atol=1e-6)


class _Int8Linear(nn.Linear):
    """A stand-in for a quantized module this package does not know: an nn.Linear holding int8 weights."""

    def __init__(self, n, k):
        super().__init__(k, n)
        self.weight = nn.Parameter(torch.zeros(n, k, dtype=torch.int8), requires_grad=False)


def test_an_unknown_quantized_module_is_refused_by_name():
    model = causal_lm("llama")
    model.model.layers[0].mlp.up_proj = _Int8Linear(128, 64)
    with pytest.raises(TypeError, match=r"cannot sparsify model.layers.0.mlp.up_proj: .*_Int8Linear.* int8.*torchao"):
        pst.sparsify(model, pst.PSTConfig())
    assert not list(pst.sparse_layers(model))  # refused before any module was replaced


@pytest.mark.parametrize("cls", ["Linear8bitLt", "Linear4bit"])
def test_bitsandbytes_modules_are_refused_by_name(cls):
    bnb = pytest.importorskip("bitsandbytes")
    dense = nn.Linear(64, 32)
    module = getattr(bnb.nn, cls)(64, 32, **({"has_fp16_weights": False} if cls == "Linear8bitLt" else {}))
    module.load_state_dict(dense.state_dict())
    module = module.to("cpu")  # quantizes
    with pytest.raises(TypeError, match=f"bitsandbytes.*{cls}.*not supported|{cls}.*bitsandbytes"):
        pst.SparseLayer(module, pst.PSTConfig(target_modules=["x"]))
