"""PST over quantized base weights on CPU, tiny LLaMA: torchao weight-only int8 and int4, bitsandbytes NF4.

Both packages are optional: each backend's tests skip where its package is missing; the refusals
of modules PST cannot read always run.
"""
import importlib.util
import logging

import pytest
import torch
from torch import nn

import pst
from test_keep_zeros import prune_by_magnitude
from tiny_decoders import causal_lm, token_batch

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _torchao(config_name):
    def quantize(model, filter_fn):
        import torchao.quantization as q
        from torchao.quantization.granularity import PerGroup

        config = q.Int8WeightOnlyConfig() if config_name == "int8" else q.IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(32))
        q.quantize_(model, config, filter_fn=filter_fn)

    return quantize


def _bnb_nf4(model, filter_fn):
    """What transformers' BitsAndBytesConfig(load_in_4bit=True) builds: Linear4bit, quantized on .to(device)."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if filter_fn(module, name):
            dtype = module.weight.dtype
            quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                          compute_dtype=dtype, quant_type="nf4")
            quantized.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False, quant_type="nf4")
            if module.bias is not None:
                quantized.bias = module.bias
            pst.surgery.replace_module(model, name, quantized.to("cpu"))


BACKENDS = {
    "torchao-int8": pytest.param(_torchao("int8"), marks=pytest.mark.skipif(not HAS_TORCHAO, reason="no torchao")),
    "torchao-int4": pytest.param(_torchao("int4"), marks=pytest.mark.skipif(not HAS_TORCHAO, reason="no torchao")),
    "bnb-nf4": pytest.param(_bnb_nf4, marks=pytest.mark.skipif(not HAS_BNB, reason="no bitsandbytes")),
}
backends = pytest.mark.parametrize("quantize", list(BACKENDS.values()), ids=list(BACKENDS))


def _projection(module, name):
    return isinstance(module, nn.Linear) and ".layers." in name


def quantized_llama(quantize, dtype=torch.float32, sparse=False):
    model = causal_lm("llama").to(dtype)
    zeros = prune_by_magnitude(model) if sparse else None
    quantize(model, _projection)
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


@backends
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_at_sparsity_0_a_layer_equals_the_quantized_layer(quantize, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).to(dtype)
    quantize(model, lambda module, name: isinstance(module, nn.Linear))
    base = model[0]
    x = torch.randn(4, 64, dtype=dtype)
    with torch.no_grad():
        expected = base(x)
        layer = pst.SparseLayer(base, pst.PSTConfig(target_modules=["0"]))
        assert layer.weight is base.weight and layer.dtype == dtype  # held as it is, no dense copy
        got = layer(x)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.dtype == dtype
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance)


@backends
def test_training_reaches_only_the_small_matrices_and_merge_writes_a_dense_sparse_model(quantize, caplog):
    model, _ = quantized_llama(quantize)
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
        assert {name.rsplit(".", 1)[1] for name in with_grad} == {"U", "V", "A", "B", "R", "C"}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = logits(model)
    with caplog.at_level(logging.WARNING, logger="pst.export"):
        pst.merge(model)
    assert f"14 sparse layers had quantized base weights ({quantized_type.__name__}" in caplog.text
    assert "into dense float32 weights" in caplog.text
    assert torch.allclose(logits(model), trained, atol=1e-5)
    for name in layers:
        weight = model.get_submodule(name).weight
        assert type(weight) is nn.Parameter and weight.dtype == torch.float32
        assert int((weight == 0).sum()) == weight.numel() // 2


@backends
def test_bf16_quantized_base_merges_to_bf16(quantize):
    model, _ = quantized_llama(quantize, torch.bfloat16)
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    losses = train(model, steps=4)
    assert losses[-1] < losses[0]
    trained = logits(model)
    pst.merge(model)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert type(weight) is nn.Parameter and weight.dtype == torch.bfloat16
    assert torch.equal(logits(model), trained)


@backends
def test_a_sparse_and_quantized_checkpoint_keeps_its_zeros(quantize):
    """The case LoRA cannot serve: a 50%-pruned model, quantized, fine-tuned and merged sparse."""
    model, zeros = quantized_llama(quantize, sparse=True)
    pst.sparsify(model, pst.PSTConfig(keep_zeros=True))
    base_zeros = {name: layer.effective_weight() == 0 for name, layer in pst.sparse_layers(model)}
    for name, zero in zeros.items():  # what the quantizer keeps as zero: at least the pruned entries
        assert base_zeros[name][zero].all()
    train(model, steps=4, lr=0.05)
    trained = logits(model)
    pst.merge(model)
    assert torch.allclose(logits(model), trained, atol=1e-5)
    for name, zero in base_zeros.items():
        assert torch.equal(model.get_submodule(name).weight == 0, zero)


@backends
def test_adapter_round_trip_on_a_quantized_base(quantize, tmp_path):
    model, _ = quantized_llama(quantize)
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    train(model, steps=2)
    trained = logits(model)
    pst.save_adapter(model, tmp_path)
    fresh, _ = quantized_llama(quantize)
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


@pytest.mark.skipif(not HAS_BNB, reason="no bitsandbytes")
def test_bitsandbytes_8bit_is_refused_by_name():
    import bitsandbytes as bnb

    module = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    module.load_state_dict(nn.Linear(64, 32).state_dict())
    module = module.to("cpu")  # quantizes
    with pytest.raises(TypeError, match="bitsandbytes.*Linear8bitLt.*Int8Params of dtype int8"):
        pst.SparseLayer(module, pst.PSTConfig(target_modules=["x"]))


def _bnb_4bit_config():
    import transformers

    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=torch.bfloat16)


def _torchao_config():
    import transformers
    from torchao.quantization import Int8WeightOnlyConfig

    return transformers.TorchAoConfig(Int8WeightOnlyConfig())


@pytest.mark.parametrize("quantization_config", [
    pytest.param(_bnb_4bit_config, marks=pytest.mark.skipif(not HAS_BNB, reason="no bitsandbytes"), id="bnb-4bit"),
    pytest.param(_torchao_config, marks=pytest.mark.skipif(not HAS_TORCHAO, reason="no torchao"), id="torchao-int8"),
])
def test_a_model_quantized_by_transformers_from_pretrained(quantization_config, tmp_path):
    """The way users load a quantized base: from_pretrained(..., quantization_config=...)."""
    import transformers

    causal_lm("llama").save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, quantization_config=quantization_config(), device_map="cpu")
    assert pst.base_weights.is_quantized(model.model.layers[0].mlp.up_proj.weight)
    pst.sparsify(model, pst.PSTConfig(sparsity=0.5))
    pst.set_sparsity(model, 0.5)
    losses = train(model, steps=3)
    assert losses[-1] < losses[0]
    pst.merge(model)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.bfloat16 and int((weight == 0).sum()) == weight.numel() // 2


@backends
@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_methods_that_train_w_are_refused_over_a_quantized_base(quantize, method):
    model, _ = quantized_llama(quantize)
    with pytest.raises(TypeError, match=r"cannot sparsify model.layers.0.self_attn.q_proj: .*cannot train.*'pst', 'lora'"):
        pst.sparsify(model, pst.PSTConfig(method=method))
    assert not list(pst.sparse_layers(model))


@backends
def test_threshold_masks_over_a_quantized_base_equal_the_bits(quantize):
    """``mask_storage="threshold"`` recomputes the score from the dequantized W in every pass."""
    def run(storage):
        model, _ = quantized_llama(quantize)
        torch.manual_seed(1)
        pst.sparsify(model, pst.PSTConfig(sparsity=0.5, mask_storage=storage))
        pst.set_sparsity(model, 0.5)
        losses = train(model, steps=3)
        return losses, {name: layer.mask() for name, layer in pst.sparse_layers(model)}

    bits_losses, bits_masks = run("bits")
    losses, masks = run("threshold")
    assert losses == bits_losses
    for name, mask in masks.items():
        assert torch.equal(mask, bits_masks[name]), name


@backends
@pytest.mark.parametrize("columns", [256, 96], ids=["rows-of-whole-blocks", "blocks-across-rows"])
def test_rows_read_a_range_at_a_time_are_the_whole_dequantization(quantize, columns):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(columns, 40)).to(torch.bfloat16)
    quantize(model, lambda module, name: isinstance(module, nn.Linear))
    weight = model[0].weight
    whole = pst.base_weights.dequantized(weight)
    read = pst.base_weights.row_reader(weight)
    for start, stop in [(0, 40), (0, 8), (8, 24), (16, 40), (3, 9), (39, 40)]:
        assert torch.equal(read(slice(start, stop)), whole[start:stop]), (start, stop)


@backends
@pytest.mark.parametrize("storage", ["bits", "threshold"])
def test_a_chunked_quantized_layer_never_holds_its_whole_dequantized_weight(monkeypatch, quantize, storage):
    """Selection, forward and backward of a 2048 x 1024 layer in 8 chunks of rows: no allocation
    reaches a chunk's entries at 4 bytes each, where the whole dequantized W alone is 8 of them."""
    from test_row_chunks import _LargestAllocation

    n, k, chunk = 2048, 1024, 262144
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n)).to(torch.bfloat16)
    quantize(model, lambda module, name: isinstance(module, nn.Linear))
    layer = pst.SparseLayer(model[0], pst.PSTConfig(target_modules=["0"], mask_storage=storage))
    with torch.no_grad():  # V and B start at 0, which would make U's and A's gradients 0
        for p in layer.method_parameters():
            p.normal_(0, 0.1)
    layer.sparsity = 0.9
    x = torch.randn(4, k, dtype=torch.bfloat16, requires_grad=True)
    expected = layer(x)
    expected.float().sum().backward()
    expected_grads = [x.grad.clone()] + [p.grad.clone() for p in layer.method_parameters()]
    monkeypatch.setattr(pst.layers, "_ROW_CHUNK_ENTRIES", chunk)
    layer.invalidate()
    layer.zero_grad(set_to_none=True)
    x.grad = None
    largest = _LargestAllocation()
    with largest:
        y = layer(x)
        y.float().sum().backward()
    assert largest.largest <= chunk * 4
    assert torch.equal(y, expected)  # the same mask and the same W' rows
    grads = [x.grad] + [p.grad for p in layer.method_parameters()]
    for got, want in zip(grads, expected_grads):  # chunks sum V, B, C and x (in bf16) in another order
        assert float((got.float() - want.float()).norm() / want.float().norm()) < 1e-2
