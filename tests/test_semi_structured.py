"""2:4 checks on CPU, the conversion's errors, and the conversion itself where a suitable CUDA GPU exists."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import pst
from pst import PSTConfig
from pst.semi_structured import MIN_COMPUTE_CAPABILITY, is_n_m_sparse, to_semi_structured
from tiny_decoders import causal_lm, perturb, token_batch

ROOT = Path(__file__).resolve().parents[1]
HAS_SPARSE_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_COMPUTE_CAPABILITY
needs_sparse_gpu = pytest.mark.skipif(not HAS_SPARSE_GPU, reason="needs a CUDA GPU of compute capability >= 8.0")


def _benchmark():
    spec = importlib.util.spec_from_file_location("inference_2to4", ROOT / "benchmarks" / "inference_2to4.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _two_four(rows=64, cols=64, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=False).to(dtype)
    _benchmark().prune_2_4_by_magnitude(linear)
    return linear


# -- is_n_m_sparse ------------------------------------------------------------------------------


def test_n_m_check_counts_non_zeros_per_group_of_consecutive_inputs():
    row = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_n_m_sparse(row, 2, 4) and is_n_m_sparse(row, 1, 4) is False
    assert is_n_m_sparse(torch.zeros(8, 16), 2, 4)
    assert not is_n_m_sparse(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 2, 4)  # 3 of 4
    assert not is_n_m_sparse(torch.zeros(4, 6), 2, 4)  # 6 inputs: no whole groups of 4
    assert is_n_m_sparse(torch.tensor([[1.0, 2, 3, 4, 0, 0, 0, 0]]), 4, 8)
    # 2:4 along the input dimension (rows of an nn.Linear weight), not along the outputs.
    along_outputs = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert is_n_m_sparse(along_outputs.t(), 2, 4) and not is_n_m_sparse(along_outputs, 2, 4)


@pytest.mark.parametrize(("n", "m"), [(0, 4), (4, 4), (5, 4), (2.0, 4)])
def test_n_m_check_rejects_a_meaningless_pattern(n, m):
    with pytest.raises(ValueError, match="0 < n < m"):
        is_n_m_sparse(torch.zeros(4, 4), n, m)


def test_magnitude_2_4_keeps_the_two_largest_of_every_four():
    linear = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -4, 3, 2, 0.5, 0.1, -0.2, 0.3], [5, 6, 7, 8, -1, -2, -3, -4]]))
    _benchmark().prune_2_4_by_magnitude(linear)
    assert torch.equal(linear.weight, torch.tensor([[0.0, -4, 3, 0, 0.5, 0, 0, 0.3], [0, 0, 7, 8, 0, 0, -3, -4]]))
    assert is_n_m_sparse(linear.weight)


# -- to_semi_structured: errors that name the problem (on any machine) ---------------------------


def _merged_llama_2_4(dtype=torch.float32):
    model = causal_lm("llama").to(dtype)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            _benchmark().prune_2_4_by_magnitude(module)
    return model


def test_conversion_refuses_a_wrapped_model():
    with pytest.raises(ValueError, match="merge"):
        to_semi_structured(pst.sparsify(causal_lm("llama"), PSTConfig()))


def test_conversion_needs_2_4_weights():
    with pytest.raises(ValueError, match="no nn.Linear of this LlamaForCausalLM has 2:4 sparse weights"):
        to_semi_structured(causal_lm("llama"))
    with pytest.raises(ValueError, match=r"not 2:4 sparse along their input dimension: \['lm_head'\]"):
        to_semi_structured(_merged_llama_2_4(), modules=["model.layers.0.self_attn.q_proj", "lm_head"])
    with pytest.raises(ValueError, match=r"not nn.Linear modules of this model: \['model.norm'\]"):
        to_semi_structured(_merged_llama_2_4(), modules=["model.norm"])


def test_conversion_names_an_unsupported_dtype_or_shape():
    with pytest.raises(ValueError, match=r"dtype float32 .*model.half\(\)"):
        to_semi_structured(_merged_llama_2_4(torch.float32))
    odd = nn.Sequential(_two_four(rows=24, cols=64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"0: shape 24x64 is not a multiple of"):
        to_semi_structured(odd)


@pytest.mark.skipif(HAS_SPARSE_GPU, reason="checks the error on machines without a 2:4-capable GPU")
def test_conversion_without_a_suitable_gpu_says_why():
    model = _merged_llama_2_4(torch.float16)
    with pytest.raises(RuntimeError, match="2:4 inference is not available here: (no CUDA GPU|.*compute capability)"):
        to_semi_structured(model)
    assert all(type(m.weight) is nn.Parameter for m in model.modules() if isinstance(m, nn.Linear))


# -- to_semi_structured on a GPU ----------------------------------------------------------------


@needs_sparse_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_llama_gives_the_dense_logits(dtype):
    model = _merged_llama_2_4(dtype).cuda()
    batch = {k: v.cuda() for k, v in token_batch().items()}
    with torch.inference_mode():
        expected = model(**batch).logits
        converted = to_semi_structured(model)
        logits = model(**batch).logits
    assert len(converted) == 2 * 7 and "lm_head" not in converted
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(logits, expected, rtol=2e-2, atol=2e-2)


def test_inference_benchmark_runs_everywhere(capsys):
    result = _benchmark().main(["--hidden", "128", "--intermediate", "256", "--kv-hidden", "64", "--layers", "1",
                                "--tokens", "64", "--repeats", "2", "--warmup", "1"])
    if HAS_SPARSE_GPU:
        assert result["measured"] and result["converted"] == 7 and result["speedup"] > 0
        assert result["max_relative_error"] < 2e-2
    else:
        assert result["measured"] is False and "not measured" in capsys.readouterr().out


# -- PST's N:M pattern: trained, ramped, merged ------------------------------------------------


def test_pst_2_4_pattern_merges_into_2_4_linear_weights():
    model = pst.sparsify(causal_lm("llama"), PSTConfig(pattern="2:4"))
    perturb(model)
    pst.set_sparsity(model, 0.5)
    merged = pst.merge(model)
    for name, module in merged.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            assert is_n_m_sparse(module.weight, 2, 4), name


def _zeros_per_group(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    return (weight == 0).reshape(-1, m).sum(dim=1)


def test_pst_trains_a_2_4_llama_in_bf16_along_the_schedule():
    """PST with pattern="2:4": the cubic schedule ramps to 50% with exactly floor(p n k) zeros per
    block at every step and never more than 2 zeros in a group of 4; the end is exactly 2:4."""
    config = PSTConfig(pattern="2:4", warmup_fraction=0.2, cooldown_fraction=0.2)
    assert config.sparsity == 0.5  # 1 - N/M
    model = pst.sparsify(causal_lm("llama"), config)
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    scheduler = pst.SparsityScheduler(model, total_steps=10)
    batch = token_batch()
    sparsities = []
    for _ in range(10):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, labels=batch["input_ids"]).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sparsity = scheduler.step()
        sparsities.append(sparsity)
        for name, layer in pst.sparse_layers(model):
            weight = layer.effective_weight()
            assert int((weight == 0).sum()) == math.floor(sparsity * weight.numel() + 1e-6), (name, sparsity)
            assert int(_zeros_per_group(weight).max()) <= 2, (name, sparsity)
    ramp = [p for p in sparsities if 0 < p < 0.5]
    assert len(set(ramp)) >= 3 and sparsities[-1] == 0.5 and sparsities == sorted(sparsities)
    trained = pst.sparse_layers(model)
    assert all(layer.V.abs().sum() > 0 and layer.B.abs().sum() > 0 for _, layer in trained)  # the score trained
    merged = pst.merge(model)
    linears = {name: m for name, m in merged.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"}
    assert len(linears) == 2 * 7
    for name, module in linears.items():
        assert is_n_m_sparse(module.weight, 2, 4), name
        assert bool((_zeros_per_group(module.weight) == 2).all()), name  # at 1 - N/M: exactly M - N per group
