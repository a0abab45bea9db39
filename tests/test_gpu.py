"""CUDA only (skipped elsewhere): a training step without one device-to-host synchronisation.

These tests have not run in this project's CI, which has no GPU; they are written to run
unchanged on one (``pytest tests/test_gpu.py``).
"""
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import pst
from pst import PSTConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Block(nn.Module):
    """A fused q/k/v Conv1D and an MLP: every kind of module the layer wraps."""

    def __init__(self, width=64):
        super().__init__()
        self.c_attn = Conv1D(3 * width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x):
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        return self.down(torch.relu(self.up(q * k + v)))


def sparse_block(method="pst", fused=3, **config):
    torch.manual_seed(0)
    model = Block().cuda()
    pst.sparsify(model, PSTConfig(method=method, target_modules=["c_attn", "up", "down"],
                                  fused_modules={"c_attn": fused}, **config))
    return model


@pytest.mark.parametrize(
    ("method", "fused", "config", "precision"),
    [
        ("pst", 3, {}, None),
        ("pst", 3, {}, torch.bfloat16),
        ("pst", {"blocks": 3, "interleave": 4}, {}, torch.float16),
        ("pst", [2, 1, 1], {"pattern": "2:4", "sparsity": 0.5}, None),
        ("movement", 3, {}, None),
        ("magnitude", 3, {}, torch.bfloat16),
    ],
)
def test_a_training_step_never_synchronises(method, fused, config, precision):
    model = sparse_block(method, fused, **config)
    optimizer = torch.optim.AdamW(pst.optimizer_parameters(model), lr=1e-3, capturable=True)
    x = torch.randn(8, 16, 64, device="cuda")

    def step(sparsity):
        pst.set_sparsity(model, sparsity)  # a new sparsity: every mask is rebuilt
        with torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None):
            loss = model(x).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step(0.3)  # allocations and lazy initialisation happen once, outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(0.4)
        step(0.5)
        with torch.no_grad():
            model(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method", ["movement", "magnitude", "pst"])
def test_cuda_masks_equal_cpu_masks(method):
    model = sparse_block(method, sparsity=0.7)
    pst.set_sparsity(model, 0.7)
    if method == "movement":  # integer scores: exact on both devices, ties everywhere
        with torch.no_grad():
            for _, layer in pst.sparse_layers(model):
                layer.scores.copy_(torch.randint(0, 4, layer.scores.shape))
    # PST at initialisation scores |W| exactly on both devices (V, B, R, C are zero).
    on_cuda = {name: layer.effective_weight() != 0 for name, layer in pst.sparse_layers(model)}
    model.cpu()
    for name, layer in pst.sparse_layers(model):
        assert torch.equal(layer.effective_weight() != 0, on_cuda[name].cpu()), name


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_a_whole_training_step_replays_in_a_cuda_graph_along_the_ramp(precision):
    """Forward, backward, optimizer and schedule captured once and replayed through warm-up,
    ramp and cool-down: after each replay the masks are those an eager rebuild selects."""
    from pst.schedule import cubic_sparsity

    model = sparse_block(sparsity=0.9)
    optimizer = torch.optim.Adam(pst.optimizer_parameters(model), lr=1e-3, capturable=True)
    scheduler = pst.SparsityScheduler(model, total_steps=12, capturable=True)
    x = torch.randn(8, 16, 64, device="cuda")

    def step():
        # cache_enabled=False: a graph cannot hold autocast's cache of cast weights
        with torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None,
                            cache_enabled=False):
            loss = model(x).float().square().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()

    side = torch.cuda.Stream()  # warm-up on a side stream, as torch's capture recipe does
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    densities = []
    for replayed in range(1, 12):
        graph.replay()
        torch.cuda.synchronize()
        layers = [layer for _, layer in pst.sparse_layers(model)]
        replayed_bits = [layer._mask_bits.clone() for layer in layers]
        # The eager path, from the host's count, over the same parameters.
        sparsity = cubic_sparsity(2 + replayed, 12, 0.1, 0.3, 0.0, 0.9)
        prunes = [layer.device_prunes for layer in layers]
        for layer in layers:
            layer.device_prunes = None
        pst.set_sparsity(model, sparsity)
        pst.invalidate_masks(model)
        pst.refresh_masks(model)
        for layer, bits, device_prunes in zip(layers, replayed_bits, prunes):
            assert torch.equal(bits, layer._mask_bits), (replayed, sparsity)
            layer.device_prunes = device_prunes
        densities.append(sum(layer.mask().float().mean().item() for layer in layers) / len(layers))
    assert densities == sorted(densities, reverse=True) and densities[0] > densities[-1] + 0.3
