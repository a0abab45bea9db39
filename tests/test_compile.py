"""torch.compile takes a PST model whole: no graph break inside pst, compiled equals eager.

The checks trace with dynamo (``explain``) and run the ``aot_eager`` backend, which traces
forward and backward like inductor does without generating code (inductor on this CPU
compiles for minutes; ``benchmarks/train_step.py --compile`` times it).
"""
import pytest
import torch
from torch import nn

import pst
from pst import PSTConfig
from tiny_decoders import causal_lm, token_batch as decoder_batch
from transformers.pytorch_utils import Conv1D


def sparse_layer(module, sparsity=0.4, **config):
    torch.manual_seed(0)
    blocks = 1 if isinstance(module, nn.Linear) else 3  # a Conv1D here fuses q, k, v like GPT-2's c_attn
    layer = pst.SparseLayer(module, PSTConfig(**config), blocks)
    with torch.no_grad():  # a trained-looking layer: every score term non-zero
        for p in layer.method_parameters():
            p.normal_(0, 0.1)
    layer.sparsity = sparsity
    return layer


def forward_backward(layer, x):
    x = x.detach().requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in layer.method_parameters()]
    layer.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize("module", [nn.Linear(48, 32), Conv1D(96, 32)], ids=["linear", "fused-conv1d"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_a_layer_compiles_with_fullgraph_and_matches_eager(module, pattern):
    layer = sparse_layer(module, pattern=pattern)
    x = torch.randn(3, 5, 32 if isinstance(module, Conv1D) else 48)
    pst.refresh_masks(layer)
    expected = forward_backward(layer, x)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fullgraph: any break raises
    got = forward_backward(compiled, x)
    torch.testing.assert_close(got[0], expected[0])
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e)


def test_a_bf16_layer_compiles_under_autocast():
    layer = sparse_layer(nn.Linear(48, 32))
    pst.refresh_masks(layer)
    x = torch.randn(4, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = forward_backward(layer, x)
        got = forward_backward(torch.compile(layer, fullgraph=True, backend="aot_eager"), x)
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], expected[0])


def _breaks_inside_pst(model, **inputs) -> list[str]:
    explanation = torch._dynamo.explain(model)(**inputs)
    return [str(b.reason) for b in explanation.break_reasons
            if any("/pst/" in frame.filename for frame in b.user_stack)]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_no_graph_break_inside_pst_in_a_whole_model(tiny_model, token_batch, arch):
    model = causal_lm("llama") if arch == "llama" else tiny_model(arch)
    pst.sparsify(model, PSTConfig(sparsity=0.9))
    pst.set_sparsity(model, 0.5)
    pst.refresh_masks(model)
    batch = decoder_batch() if arch == "llama" else token_batch
    assert _breaks_inside_pst(model.eval(), **batch) == []


def test_a_compiled_model_follows_the_schedule(tiny_model, token_batch):
    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.8)).eval()
    compiled = torch.compile(model, backend="aot_eager")
    scheduler = pst.SparsityScheduler(model, total_steps=10, warmup_fraction=0.0, cooldown_fraction=0.0)
    optimizer = torch.optim.SGD(pst.optimizer_parameters(model), lr=0.1)
    for _ in range(4):
        compiled(**token_batch).logits.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        layer = model.bert.encoder.layer[0].attention.self.query
        # What the compiled step will use is the mask of the current parameters and sparsity.
        bits = layer._mask_bits.clone()
        pst.invalidate_masks(model)
        pst.refresh_masks(model)
        assert torch.equal(bits, layer._mask_bits)
        assert pst.sparsity_report(model)[0]["sparsity"] == pytest.approx(scheduler.get_sparsity(), abs=1e-3)
    torch.testing.assert_close(compiled(**token_batch).logits, model(**token_batch).logits)


def test_steps_along_the_ramp_issue_the_same_ops_with_the_same_shapes(tiny_model, token_batch):
    """What a CUDA graph captures (forward and backward) is the same at every step of the ramp;
    only the refresh, which runs outside the step (the schedule calls it), knows the sparsity."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from op_count import OpCounter

    model = pst.sparsify(tiny_model("bert"), PSTConfig(sparsity=0.9)).train()
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-2)
    scheduler = pst.SparsityScheduler(model, total_steps=10, warmup_fraction=0.1, cooldown_fraction=0.3)
    sequences, sparsities = [], []
    for step in range(6):
        with OpCounter() as counter:
            torch.manual_seed(0)  # the same dropout draws
            model(**token_batch, labels=torch.tensor([0, 2])).loss.backward()
        sequences.append(counter.sequence)
        sparsities.append(scheduler.get_sparsity())
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert len(set(sparsities[2:])) == 4  # inside the ramp, a new sparsity every step
    assert all(sequence == sequences[0] for sequence in sequences[1:])
