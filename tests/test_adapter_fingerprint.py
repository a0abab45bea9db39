"""An adapter knows its base: loading it onto other weights of the same shape warns, naming a matrix."""
import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import pst
from pst.adapter import ADAPTER_CONFIG
from pst.base_fingerprint import SAMPLES, BaseMismatchWarning, _positions, sample_entries
from tiny_decoders import causal_lm, perturb


@pytest.fixture
def adapter(tmp_path):
    """An adapter trained (perturbed) on the seed-0 tiny LLaMA, saved from fp32."""
    model = pst.sparsify(causal_lm("llama", seed=0), pst.PSTConfig(sparsity=0.5))
    perturb(model)
    return pst.save_adapter(model, tmp_path / "adapter")


def _load(base, folder) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pst.load_adapter(base, folder)
    return [w for w in caught if issubclass(w.category, BaseMismatchWarning)]


def test_the_fingerprint_is_stored_per_sparsified_matrix(adapter):
    record = json.loads((adapter / ADAPTER_CONFIG).read_text())["base_fingerprint"]
    layers = json.loads((adapter / ADAPTER_CONFIG).read_text())["layers"]
    assert set(record["matrices"]) == set(layers)
    base = dict(causal_lm("llama", seed=0).named_modules())
    name = next(iter(layers))
    rows, columns = _positions(base[name].weight.shape, SAMPLES)
    assert record["matrices"][name] == pytest.approx(base[name].weight[rows, columns].tolist(), rel=1e-7)
    assert len(set(zip(rows, columns))) == SAMPLES  # distinct entries, spread over the matrix
    assert max(rows) - min(rows) > base[name].weight.shape[0] // 2


def test_same_base_loads_without_a_warning(adapter):
    assert _load(causal_lm("llama", seed=0), adapter) == []


def test_another_seed_warns_naming_the_first_matrix(adapter):
    caught = _load(causal_lm("llama", seed=1), adapter)
    assert len(caught) == 1
    message = str(caught[0].message)
    first = next(iter(json.loads((adapter / ADAPTER_CONFIG).read_text())["layers"]))
    assert f"first: {first}" in message and str(adapter) in message
    assert "14 of 14 sparsified matrices differ" in message  # every matrix of the 2-layer LLaMA
    assert caught[0].filename == __file__  # points at the caller's load_adapter line


def test_one_changed_matrix_is_the_one_named(adapter):
    base = causal_lm("llama", seed=0)
    layer = base.model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.weight.mul_(1.1)  # a further fine-tune of one matrix
    (caught,) = _load(base, adapter)
    message = str(caught.message)
    assert "1 of 14 sparsified matrices differ" in message and "first: model.layers.1.mlp.down_proj;" in message


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_same_weights_in_half_precision_are_the_same_base(adapter, tmp_path, dtype):
    """Decided: a checkpoint loaded in bf16/fp16 is the base the fp32 adapter was trained on (the
    usual hub round trip); the masks then differ only where bf16 rounding reorders |W'|."""
    causal_lm("llama", seed=0).save_pretrained(tmp_path / "base")
    assert _load(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype), adapter) == []
    other = causal_lm("llama", seed=1).to(dtype)
    assert len(_load(other, adapter)) == 1


def test_an_adapter_saved_from_bf16_accepts_the_fp32_base(tmp_path):
    model = pst.sparsify(causal_lm("llama", seed=0).to(torch.bfloat16), pst.PSTConfig(sparsity=0.5))
    folder = pst.save_adapter(model, tmp_path / "adapter")
    assert _load(causal_lm("llama", seed=0), folder) == []


def test_an_adapter_without_a_fingerprint_loads_as_before(adapter):
    path = adapter / ADAPTER_CONFIG
    description = json.loads(path.read_text())
    del description["base_fingerprint"]
    path.write_text(json.dumps(description))
    assert _load(causal_lm("llama", seed=1), adapter) == []


def test_meta_weights_are_not_sampled():
    assert sample_entries(torch.empty(4, 4, device="meta")) is None


def test_a_weight_that_cannot_be_indexed_is_not_sampled():
    class Packed(torch.Tensor):  # stands for a quantized tensor subclass without element indexing
        def __getitem__(self, index):
            raise NotImplementedError("packed")

    assert sample_entries(torch.zeros(4, 4).as_subclass(Packed)) is None
    assert sample_entries(torch.zeros(16)) is None  # not a matrix
