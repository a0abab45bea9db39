"""PST computed the way the official code computes it, as the benchmark's reference row.

Our own implementation of the official algorithm (Li et al. 2022, the AliceMind PST
package): the mask comes from a full ``argsort`` of the score on every forward call, as a
float tensor, and autograd keeps every intermediate (W', S, M, M * W') from forward to
backward. Same parameters, initialisation, fused blocks and straight-through gradient as
``pst.SparseLayer``; only the way of computing differs.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import pst
from pst.surgery import matches_target


class SortedMask(torch.autograd.Function):
    """M from a full sort of S; the gradient passes straight through (dL/dS = dL/dM)."""

    @staticmethod
    def forward(ctx, score, sparsity):
        mask = torch.ones(score.shape, dtype=score.dtype, device=score.device)
        pruned = torch.argsort(score.flatten())[: int(score.numel() * sparsity)]
        mask.view(-1)[pruned] = 0.0
        return mask

    @staticmethod
    def backward(ctx, grad_mask):
        return grad_mask, None


class OfficialStyleLayer(nn.Module):
    """y = x (M * W')^T + b with every intermediate a node of the autograd graph."""

    def __init__(self, base: nn.Module, config: pst.PSTConfig, blocks: int) -> None:
        super().__init__()
        self.transposed = isinstance(base, Conv1D)
        self.weight, self.bias = base.weight, base.bias
        n, k = pst.layers.oriented_shape(base)
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.blocks, self.sparsity = blocks, 0.0
        self.beta, self.alpha1, self.alpha2 = config.beta, config.alpha1, config.alpha2
        self.U = nn.Parameter(torch.randn(n, config.weight_rank, **like))
        self.V = nn.Parameter(torch.zeros(blocks, config.weight_rank, k, **like))
        self.A = nn.Parameter(torch.randn(n, config.score_rank, **like))
        self.B = nn.Parameter(torch.zeros(blocks, config.score_rank, k, **like))
        self.R = nn.Parameter(torch.zeros(n, **like))
        self.C = nn.Parameter(torch.zeros(blocks, k, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transposed else self.weight
        n_b = weight.shape[0] // self.blocks
        parts = []
        for b in range(self.blocks):
            rows = slice(b * n_b, (b + 1) * n_b)
            updated = weight[rows] + self.beta * self.U[rows] @ self.V[b]
            score = (updated.abs() + self.alpha1 * self.A[rows] @ self.B[b]
                     + self.alpha2 * (self.R[rows].unsqueeze(1) + self.C[b].unsqueeze(0)))
            parts.append(SortedMask.apply(score, self.sparsity) * updated)
        return nn.functional.linear(x, torch.cat(parts), self.bias)


def official_sparsify(model: nn.Module, config: pst.PSTConfig, sparsity: float) -> nn.Module:
    """Wrap PST's targets in official-style layers and freeze what PST freezes."""
    resolved = config.resolved_for(getattr(model.config, "model_type", None))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in pst.find_targets(model, resolved):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        blocks = next((b for s, b in resolved.fused_modules.items() if matches_target(name, [s])), 1)
        layer = OfficialStyleLayer(getattr(parent, child), resolved, blocks)
        layer.sparsity = sparsity
        setattr(parent, child, layer)
    for name, module in model.named_modules():
        if name and matches_target(name, resolved.head_modules or []):
            module.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, OfficialStyleLayer):
            for parameter in (module.U, module.V, module.A, module.B, module.R, module.C):
                parameter.requires_grad_(True)
    return model
