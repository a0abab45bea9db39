"""A slow, obviously-correct autograd implementation of the PST equations (shared/PAPER.md).

Everything is written out per block with plain tensor ops and a full stable sort, and the
straight-through estimator is the usual M + (S - S.detach()) trick; the fast layer must
agree with it to float64 precision.
"""
import math

import torch


def reference_mask(score_block: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zeros at the floor(p * numel) smallest entries; ties pruned lowest index first."""
    flat = score_block.detach().flatten()
    prune = math.floor(sparsity * flat.numel() + 1e-6)
    order = torch.sort(flat, stable=True).indices
    mask = torch.ones_like(flat)
    mask[order[:prune]] = 0
    return mask.view_as(score_block)


def reference_output(x, layer, params):
    """y for a SparseLayer's settings, with ``params`` (name -> leaf tensor) in output x input form."""
    blocks = layer.blocks
    W = params["weight_oi"]
    n_b = W.shape[0] // blocks
    effective_blocks = []
    for b in range(blocks):
        rows = slice(b * n_b, (b + 1) * n_b)
        W_b = W[rows]
        if layer.U is not None:
            V_b = params["V"][b] if blocks > 1 else params["V"]
            W_b = W_b + layer.beta * params["U"][rows] @ V_b
        S = torch.zeros_like(W_b)
        if layer.magnitude_score:
            S = S + (W_b.abs() if layer.spec.magnitude_score_grad else W_b.abs().detach())
        if layer.A is not None:
            B_b = params["B"][b] if blocks > 1 else params["B"]
            S = S + layer.alpha1 * params["A"][rows] @ B_b
        if layer.R is not None:
            C_b = params["C"][b] if blocks > 1 else params["C"]
            S = S + layer.alpha2 * (params["R"][rows][:, None] + C_b[None, :])
        if layer.scores is not None:
            S = S + params["scores"][rows]
        if layer.spec.prunes:
            M = reference_mask(S, layer.sparsity)
            M = M + (S - S.detach())  # straight-through: dL/dS = dL/dM
            W_b = M * W_b
        effective_blocks.append(W_b)
    effective = torch.cat(effective_blocks)
    y = x @ effective.t()
    if params.get("bias") is not None:
        y = y + params["bias"]
    return y
