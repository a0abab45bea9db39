"""A slow, obviously-correct autograd implementation of the PST equations (docs/method.md).

Everything is written out per block with plain tensor ops, explicit row lists and a full
stable sort, and the straight-through estimator is the usual M + (S - S.detach()) trick; the
fast layer must agree with it to float64 precision.
"""
import math

import torch


def block_rows(sizes, repeats, block):
    """Row numbers of block ``block``: in each of ``repeats`` repetitions of the ``sizes`` pattern."""
    period, start = sum(sizes), sum(sizes[:block])
    return torch.tensor([r * period + start + t for r in range(repeats) for t in range(sizes[block])])


def reference_mask(score_block, sparsity, pattern=None):
    """Zeros at the floor(p * numel) smallest entries; ties pruned lowest index first.

    With an N:M pattern only the M - N lowest-scored entries of every M consecutive ones are
    candidates (ties: lowest index first), and the lowest-scored candidates are pruned.
    """
    flat = score_block.detach().flatten()
    prune = math.floor(sparsity * flat.numel() + 1e-6)
    candidates = torch.arange(flat.numel())
    if pattern is not None:
        kept, group = pattern
        chosen = []
        for start in range(0, flat.numel(), group):
            order = torch.sort(flat[start : start + group], stable=True).indices
            chosen += [start + int(i) for i in order[: group - kept]]
        candidates = torch.tensor(sorted(chosen))
        prune = min(prune, len(candidates))
    order = torch.sort(flat[candidates], stable=True).indices
    mask = torch.ones_like(flat)
    mask[candidates[order[:prune]]] = 0
    return mask.view_as(score_block)


def reference_output(x, layer, params):
    """y for a SparseLayer's settings, with ``params`` (name -> leaf tensor) in output x input form."""
    sizes, repeats = layer.layout.sizes, layer.layout.repeats
    blocks = len(sizes)
    W = params["weight_oi"]
    effective = torch.zeros_like(W)
    for b in range(blocks):
        rows = block_rows(sizes, repeats, b)
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
            M = reference_mask(S, layer.sparsity, layer.pattern)
            M = M + (S - S.detach())  # straight-through: dL/dS = dL/dM
            W_b = M * W_b
        effective = effective.index_copy(0, rows, W_b)
    y = x @ effective.t()
    if params.get("bias") is not None:
        y = y + params["bias"]
    return y
