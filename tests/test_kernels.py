"""The fused Triton kernels (``pst.kernels``) equal the torch reference of ``pst.layers``.

Without a GPU they run in Triton's interpreter on CPU tensors, which must be switched on before
triton is first imported: ``TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py`` (CI installs
triton beside the environment for this file: .ci/run). Without triton the file skips.
"""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU: run with TRITON_INTERPRET=1 (Triton's CPU interpreter)", allow_module_level=True)

from pst import PSTConfig, kernels  # noqa: E402
from pst.fused import BlockLayout  # noqa: E402
from pst.layers import SparseLayer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (module, config, blocks): every layer shape and method the kernels serve.
CASES = {
    "linear-pst": (lambda: nn.Linear(48, 40), {}, 1),
    "conv1d-pst-fused": (lambda: Conv1D(36, 20), {}, 3),  # GPT-2's c_attn: q, k, v blocks
    "linear-pst-interleaved": (lambda: nn.Linear(24, 32), {}, BlockLayout((2, 1, 1), repeats=8)),
    "linear-pst-2:4": (lambda: nn.Linear(32, 24), {"pattern": "2:4"}, 1),
    "linear-pst-rank3": (lambda: nn.Linear(40, 24), {"weight_rank": 3, "score_rank": 5}, 1),
    "linear-no-magnitude": (lambda: nn.Linear(40, 24), {"score_magnitude": False}, 1),
    "linear-magnitude": (lambda: nn.Linear(40, 24), {"method": "magnitude"}, 1),
    "linear-movement": (lambda: nn.Linear(40, 24), {"method": "movement"}, 1),
    "linear-lora": (lambda: nn.Linear(40, 24), {"method": "lora"}, 1),
    "conv1d-keep-zeros": (lambda: Conv1D(24, 16), {"keep_zeros": True, "sparsity": 0.6}, 1),
}


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles smaller than the test layers, in the interpreter too: programs meet at tile edges."""
    monkeypatch.setattr(kernels, "INTERPRETER_TILES", (8, 16))
    monkeypatch.setattr(kernels, "INTERPRETER_SELECT_TILE", 16)


@pytest.fixture
def mode():
    """Restores the kernel mode after a test that changes it."""
    yield kernels.set_mode
    kernels.set_mode(os.environ.get("PST_KERNELS", "auto"))


def _pair(case: str, dtype: torch.dtype = torch.float32, sparsity: float = 0.5):
    """Two equal layers with non-zero factors (the reference's and the kernels')."""
    make, config, blocks = CASES[case]
    torch.manual_seed(0)
    base = make()
    if config.get("keep_zeros"):
        with torch.no_grad():
            base.weight.mul_(torch.rand_like(base.weight) > 0.3)  # an already-sparse base
    layer = SparseLayer(base, PSTConfig(**config), blocks=blocks).to(DEVICE, dtype)
    with torch.no_grad():
        for parameter in layer.method_parameters():
            parameter.normal_(0, 0.1)
    layer.sparsity = sparsity if layer.spec.prunes else 0.0
    return layer, copy.deepcopy(layer)


def _run(layer, x, autocast: bool = False):
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters() if p.grad is not None}
    return y, x.grad, grads


def _tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_equals_the_reference(case, mode):
    reference, fused = _pair(case)
    if not reference.spec.prunes:
        pytest.skip("this method has no score")
    mode("reference")
    expected = reference.score()
    mode("triton")
    torch.testing.assert_close(fused.score(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", ["fp32", "bf16-weights", "bf16-autocast"])
def test_forward_and_backward_equal_the_reference(case, precision, mode):
    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
    reference, fused = _pair(case, dtype)
    x = torch.randn(3, 5, reference.in_features, device=DEVICE, dtype=dtype)
    mode("reference")
    if reference.spec.prunes:
        reference.refresh_mask()
        fused._mask_bits = reference._mask_bits.clone()  # the same mask: compare the passes, not the selection
        fused._mask_key = fused._state_key()
    expected = _run(reference, x, autocast=precision == "bf16-autocast")
    mode("triton")
    y, grad_x, grads = _run(fused, x, autocast=precision == "bf16-autocast")
    tolerance = _tolerance(torch.float32 if precision == "fp32" else torch.bfloat16)
    torch.testing.assert_close(y, expected[0], **tolerance)
    torch.testing.assert_close(grad_x, expected[1], **tolerance)
    assert grads.keys() == expected[2].keys()
    for name, grad in grads.items():
        assert grad.dtype == expected[2][name].dtype, name
        torch.testing.assert_close(grad, expected[2][name], **tolerance, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", ["linear-pst", "conv1d-pst-fused", "linear-pst-2:4", "conv1d-keep-zeros",
                                  "linear-movement"])
@pytest.mark.parametrize("selection", ["kthvalue", "topk", "sort"])
def test_masks_equal_the_reference_along_the_schedule(case, selection, mode, monkeypatch):
    """The selection reads the fused score: masks agree with the reference's (the CPU's kthvalue
    strategy on the torch score), up to entries whose scores differ from the threshold by rounding
    (none at these sizes). The sync-free strategies of accelerators ("topk", and "sort" from a
    capturable schedule's device counts) select through the fused selection kernels."""
    from pst.device_schedule import DevicePrunes

    reference, fused = _pair(case)
    if selection == "sort" and reference.keep_zeros:
        pytest.skip("a capturable schedule refuses keep_zeros")
    for sparsity in (0.2, 0.4, 0.5) if reference.pattern else (0.2, 0.4, 0.6, 0.8, 0.9):
        reference.sparsity = fused.sparsity = sparsity
        mode("reference")
        expected = reference.mask()
        mode("triton")
        if selection == "sort":
            numels = [fused.layout.block_rows(b) * fused.in_features for b in range(fused.blocks)]
            fused.device_prunes = DevicePrunes(lambda step: sparsity, 1, numels, [fused.weight.device])
        with monkeypatch.context() as patch:
            if selection != "kthvalue":
                patch.setattr("pst.masking.default_strategy", lambda device: "topk")
            fused.invalidate()
            assert torch.equal(fused.mask(), expected), sparsity


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", [None, (2, 4)])
@pytest.mark.parametrize("entries", [64, 100])  # whole tiles and bytes, and a ragged end of both
def test_the_fused_selection_packs_the_masks_of_the_reference(dtype, pattern, entries):
    from pst.layers import pack_mask
    from pst.masking import keep_bits, keep_mask

    torch.manual_seed(0)
    scores = torch.randn(3, entries, device=DEVICE).to(dtype)
    scores[:, ::3] = scores[:, 5:6]  # ties across tiles at every threshold

    def packed(keep):
        rows = [torch.empty(-(-entries // 8), dtype=torch.uint8, device=DEVICE) for _ in keep]
        for row, out in zip(keep, rows):
            pack_mask(row, out=out)
        return torch.stack(rows)

    most = entries // 2 if pattern else entries
    for prune in sorted({0, 1, 7, 33, 34, most - 1, most, most + 5}):
        expected = packed(keep_mask(scores, prune, pattern, strategy="topk"))
        assert torch.equal(keep_bits(scores, prune, pattern), expected), prune
        assert torch.equal(keep_bits(scores, torch.tensor(prune, device=DEVICE), pattern), expected), prune
    counts = torch.tensor([0, 17, most], device=DEVICE)  # one count per row, on the device
    assert torch.equal(keep_bits(scores, counts, pattern), packed(keep_mask(scores, counts, pattern)))


def test_float64_layers_use_the_reference(mode):
    mode("auto")
    assert not kernels.enabled(torch.zeros(2, 2, dtype=torch.float64, device=DEVICE))
    mode("triton")
    assert not kernels.enabled(torch.zeros(2, 2, dtype=torch.float64, device=DEVICE))
    assert kernels.enabled(torch.zeros(2, 2, device=DEVICE))
    mode("reference")
    assert not kernels.enabled(torch.zeros(2, 2, device=DEVICE))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="PST_KERNELS must be one of"):
        kernels.set_mode("fast")


def test_a_layer_is_two_launches_forward_and_eleven_backward(mode):
    """What the kernels are for: PST's layer forward is M * W' and one product; its backward
    recomputes M * W', takes the two dense products, one straight-through pass, the bias sum
    and the six rank-r gradients (U, V, A, B, R, C). The reference takes 5 + 20 ops: W', the
    mask's lookup (index cast and gather), M * W' and the product forward; in backward W' again,
    the mask once, M * W', dL/dS in place of W', the sign and the masked G for dL/dW', the two
    dense and four rank-r products, the bias sum, and, for R's and C's sums taken by A's and B's
    products, two small factors joined with ones (and autograd's copies of the two sliced
    gradients)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from op_count import OpCounter

    mode("triton")
    layer, _ = _pair("linear-pst")
    layer.weight.requires_grad_(False)  # frozen, as PST trains it
    layer.refresh_mask()
    x = torch.randn(4, layer.in_features, device=DEVICE, requires_grad=True)
    with OpCounter() as forward:
        y = layer(x)
    grad_y = torch.randn_like(y)
    with OpCounter() as backward:
        y.backward(grad_y)
    assert sum(forward.ops.values()) == 2, forward.ops
    assert forward.ops["masked_update"] == 1
    assert sum(backward.ops.values()) == 11, backward.ops
    assert backward.ops["straight_through"] == 1 and backward.ops["masked_update"] == 1
    mode("reference")
    layer.zero_grad(set_to_none=True)
    x.grad = None  # no accumulation into the first pass's gradients
    with OpCounter() as forward:
        y = layer(x)
    with OpCounter() as backward:
        y.backward(grad_y)
    assert (sum(forward.ops.values()), sum(backward.ops.values())) == (5, 20), (forward.ops, backward.ops)


def test_the_refresh_computes_each_score_in_one_launch(mode):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from op_count import OpCounter

    mode("triton")
    layer, _ = _pair("conv1d-pst-fused")
    with OpCounter() as counter:
        layer.refresh_mask()
    assert counter.ops["block_score"] == 3  # one per fused block
    assert not {"abs_", "baddbmm", "baddbmm_", "add_"} & set(counter.ops)


def test_the_fused_selection_replaces_the_passes_over_the_scores(mode, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from op_count import OpCounter

    mode("triton")
    monkeypatch.setattr("pst.masking.default_strategy", lambda device: "topk")
    layer, _ = _pair("linear-pst")
    with OpCounter() as counter:
        layer.refresh_mask()
    assert counter.ops["tie_counts"] == 1 and counter.ops["select_bits"] == 1
    # Left of the reference's ten passes: the threshold (topk, amin), the tie prefix (cumsum,
    # sub), the count still due (rsub) and the copy of the bits into the layer's buffer.
    assert not {"lt", "eq", "le", "bitwise_and", "bitwise_or", "bitwise_not", "logical_not",
                "__lshift__"} & set(counter.ops), counter.ops


def test_a_compiled_layer_has_no_graph_break_and_equals_eager(mode):
    mode("triton")
    layer, _ = _pair("conv1d-pst-fused")
    layer.refresh_mask()
    x = torch.randn(2, 3, layer.in_features, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))


def test_the_self_check_passes_and_a_failing_kernel_falls_back_with_a_warning(monkeypatch):
    """On CUDA, ``auto`` uses the kernels only where they compile and compute right."""
    device = torch.device(DEVICE)
    kernels._self_check(device)  # the check itself: every kernel against torch
    monkeypatch.setattr(kernels, "_verdicts", {})

    def broken():
        raise RuntimeError("no such PTX")

    monkeypatch.setattr(kernels, "_kernels", broken)
    with pytest.warns(UserWarning, match="no such PTX.*unfused torch reference"):
        assert not kernels._works_on(device)
    assert not kernels._works_on(device)  # once per device
