"""The sparse layer: one frozen (or trainable) weight matrix, its mask and its small matrices.

For a weight W (n outputs x k inputs) at sparsity p (shared/PAPER.md):

    W' = W + beta U V
    S  = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T)
    M  = 0 at the floor(p n k) smallest entries of S, 1 elsewhere
    y  = x (M * W')^T + b

with the straight-through estimator dL/dS = dL/d(M * W') * W'. The same layer also runs the
baselines (magnitude, movement, LoRA) by switching terms on and off (see ``pst.methods``).

Memory: the autograd function saves only the input, the parameters (no copies) and a
boolean mask; W', the score and M * W' are recomputed in the backward pass, so no
n x k float tensor outlives the layer's forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import PSTConfig
from .masking import keep_mask, num_pruned
from .methods import get_method

SUPPORTED_MODULES = (nn.Linear, Conv1D)


@dataclass(frozen=True)
class _Terms:
    """Constants of one forward call, passed to the autograd function."""

    transposed: bool  # Conv1D stores its weight as (in, out)
    blocks: int  # fused matrices (GPT-2 c_attn: q, k, v), each with its own mask
    beta: float
    alpha1: float
    alpha2: float
    magnitude_score: bool
    magnitude_score_grad: bool
    prune: int  # entries pruned per block; 0 = no mask


class SparseLayer(nn.Module):
    """Wraps an ``nn.Linear`` or GPT-2 ``Conv1D`` for PST or one of its baselines.

    The wrapped module's ``weight`` and ``bias`` Parameters are taken over as they are (no
    copy) and keep their names, so state dicts stay recognisable. New parameters are named
    after the paper's symbols and shaped output x input whatever the wrapped module:
    ``U`` (n x r), ``V`` (r x k), ``A`` (n x r_s), ``B`` (r_s x k), ``R`` (n), ``C`` (k),
    or ``scores`` (n x k) for movement pruning. For a module fusing ``blocks`` matrices
    (GPT-2 ``c_attn``), each block has its own mask and its own V, B and C, stacked on a
    leading block axis (``V``: blocks x r x k, ``C``: blocks x k), as if the matrices were
    separate modules, which is how the paper's model is built.

    ``sparsity`` is a plain float attribute in [0, 1), moved by the schedule.
    """

    def __init__(self, base: nn.Module, config: PSTConfig, blocks: int = 1) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_MODULES):
            raise TypeError(
                f"cannot sparsify a {type(base).__name__}; supported modules: nn.Linear and transformers Conv1D"
            )
        self.transposed = isinstance(base, Conv1D)
        self.weight = base.weight
        self.bias = base.bias
        out_features, in_features = self.weight.shape[::-1] if self.transposed else self.weight.shape
        if out_features % blocks:
            raise ValueError(f"{out_features} output features cannot be split into {blocks} fused blocks")
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        self.method = config.method
        self.spec = get_method(config.method)
        self.beta, self.alpha1, self.alpha2 = config.beta, config.alpha1, config.alpha2
        self.magnitude_score = config.uses_magnitude_score
        self.sparsity = 0.0
        self._create_parameters(config)

    def _create_parameters(self, config: PSTConfig) -> None:
        n, k, blocks = self.out_features, self.in_features, self.blocks
        like = {"device": self.weight.device, "dtype": self.weight.dtype}

        def stacked(*shape: int) -> torch.Size:  # a leading block axis only for fused modules
            return torch.Size((blocks, *shape) if blocks > 1 else shape)

        self.U = self.V = self.A = self.B = self.R = self.C = self.scores = None
        if self.spec.low_rank_update:  # U ~ N(0, 1), V = 0: W' = W at step 0 (official init)
            self.U = nn.Parameter(torch.randn(n, config.weight_rank, **like))
            self.V = nn.Parameter(torch.zeros(stacked(config.weight_rank, k), **like))
        if config.uses_low_rank_score:
            self.A = nn.Parameter(torch.randn(n, config.score_rank, **like))
            self.B = nn.Parameter(torch.zeros(stacked(config.score_rank, k), **like))
        if config.uses_structured_score:
            self.R = nn.Parameter(torch.zeros(n, **like))
            self.C = nn.Parameter(torch.zeros(stacked(k), **like))
        if self.spec.full_score:  # movement pruning's scores start at 0, as in Sanh et al.
            self.scores = nn.Parameter(torch.zeros(n, k, **like))

    # -- parameters grouped by role ----------------------------------------------------
    def method_parameters(self) -> list[nn.Parameter]:
        """Parameters this layer added to the model (not the wrapped weight and bias)."""
        return [p for p in (self.U, self.V, self.A, self.B, self.R, self.C, self.scores) if p is not None]

    def _terms(self) -> _Terms:
        prune = num_pruned(self.sparsity, self.out_features * self.in_features // self.blocks)
        return _Terms(
            transposed=self.transposed, blocks=self.blocks, beta=self.beta, alpha1=self.alpha1,
            alpha2=self.alpha2, magnitude_score=self.magnitude_score,
            magnitude_score_grad=self.magnitude_score and self.spec.magnitude_score_grad,
            prune=prune if self.spec.prunes else 0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SparseLinearFunction.apply(
            x, self.weight, self.bias, self.U, self.V, self.A, self.B, self.R, self.C, self.scores, self._terms()
        )

    # -- inspection and export ------------------------------------------------------------
    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """M * W' in output x input orientation, as the forward pass uses it."""
        terms = self._terms()
        updated = _updated_weight(self.weight, self.U, self.V, terms)
        if terms.prune == 0:
            return updated.reshape(self.out_features, self.in_features).clone()
        mask = _mask(updated, self.A, self.B, self.R, self.C, self.scores, terms)
        return (updated * mask).reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def to_plain_module(self) -> nn.Module:
        """A plain ``nn.Linear``/``Conv1D`` holding M * W' (the wrapped bias is reused)."""
        merged = self.effective_weight()
        if self.transposed:
            module = Conv1D(self.out_features, self.in_features)
            merged = merged.t()
        else:
            module = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        module.to(device=self.weight.device, dtype=self.weight.dtype)
        module.weight = nn.Parameter(merged.contiguous())
        if self.bias is not None:
            module.bias = self.bias
        return module

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, in_features={self.in_features}, out_features={self.out_features}, "
            f"blocks={self.blocks}, sparsity={self.sparsity:.4f}"
        )


# ---------------------------------------------------------------------------------------------
# The computation. Tensors of a (possibly fused) weight are handled as (blocks, n / blocks, k).


def _blocked(matrix: torch.Tensor, terms: _Terms) -> torch.Tensor:
    """View a weight parameter as (blocks, n_b, k) in output x input orientation (no copy)."""
    w = matrix.t() if terms.transposed else matrix
    return w.view(terms.blocks, w.shape[0] // terms.blocks, w.shape[1])


def _per_block(t: torch.Tensor, terms: _Terms) -> torch.Tensor:
    """V, B (r x k) or C (k) of an unfused layer gain a leading block axis of size 1."""
    return t.unsqueeze(0) if terms.blocks == 1 else t


def _updated_weight(weight, U, V, terms: _Terms) -> torch.Tensor:
    """W' = W + beta U V as (blocks, n_b, k); the parameter itself when there is no update."""
    w = _blocked(weight, terms)
    if U is None:
        return w
    u = U.view(terms.blocks, -1, U.shape[1])
    return torch.baddbmm(w, u, _per_block(V, terms), alpha=terms.beta)


def _augmented_factors(A, B, R, C, terms: _Terms):
    """Factors whose product is alpha1 A B + alpha2 (R 1^T + 1 C^T), one matmul per block.

    Left: [alpha1 A | alpha2 R | alpha2 1], right: [B ; 1^T ; C^T]. Returns ``None`` when
    the score has no data-driven low-rank or structured part.
    """
    left, right = [], []
    blocks = terms.blocks
    if A is not None:
        left.append(terms.alpha1 * A.view(blocks, -1, A.shape[1]))
        right.append(_per_block(B, terms))
    if R is not None:
        rows = R.view(blocks, -1, 1)
        cols = _per_block(C, terms).unsqueeze(1)
        left += [terms.alpha2 * rows, torch.full_like(rows, terms.alpha2)]
        right += [torch.ones_like(cols), cols]
    if not left:
        return None
    return torch.cat(left, dim=2), torch.cat(right, dim=1)


def _score(updated, A, B, R, C, scores, terms: _Terms) -> torch.Tensor:
    """S as (blocks, n_b, k)."""
    factors = _augmented_factors(A, B, R, C, terms)
    score = torch.bmm(*factors) if factors is not None else None
    if scores is not None:
        full = scores.view(terms.blocks, -1, scores.shape[1])
        score = full if score is None else score + full
    if terms.magnitude_score:
        score = updated.abs() if score is None else score.add_(updated.abs())
    if score is None:
        raise ValueError("this layer prunes but has no score term")
    return score


def _mask(updated, A, B, R, C, scores, terms: _Terms) -> torch.Tensor:
    score = _score(updated, A, B, R, C, scores, terms)
    return keep_mask(score.reshape(terms.blocks, -1), terms.prune).view_as(score)


class SparseLinearFunction(torch.autograd.Function):
    """y = x (M * W')^T + b with the straight-through estimator, recomputing in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, U, V, A, B, R, C, scores, terms: _Terms):
        updated = _updated_weight(weight, U, V, terms)
        mask = _mask(updated, A, B, R, C, scores, terms) if terms.prune > 0 else None
        effective = updated * mask if mask is not None else updated
        n_rows = effective.shape[0] * effective.shape[1]
        y = nn.functional.linear(x, effective.reshape(n_rows, -1), bias)
        ctx.terms = terms
        ctx.save_for_backward(x, weight, U, V, A, B, R, C, scores, mask)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, U, V, A, B, R, C, scores, mask = ctx.saved_tensors
        terms: _Terms = ctx.terms
        needs = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = grad_U = grad_V = grad_A = grad_B = grad_R = grad_C = grad_scores = None

        updated = _updated_weight(weight, U, V, terms)
        blocks, n_b, k = updated.shape
        effective = updated * mask if mask is not None else updated
        grad_y2 = grad_y.reshape(-1, blocks * n_b)
        if needs[0]:
            grad_x = (grad_y2 @ effective.reshape(blocks * n_b, k)).view_as(x)
        del effective
        if needs[2]:
            grad_bias = grad_y2.sum(0)
        score_needs = any(needs[i] for i in (5, 6, 7, 8, 9))
        weight_needs = any(needs[i] for i in (1, 3, 4))
        if not (score_needs or weight_needs):
            return grad_x, None, grad_bias, None, None, None, None, None, None, None, None

        # dL/d(M * W'), the dense gradient every method needs: the third matmul of a layer.
        grad_effective = (grad_y2.t() @ x.reshape(-1, k)).view(blocks, n_b, k)
        # Straight-through: dL/dS = dL/dM = dL/d(M * W') * W'.
        grad_score = grad_effective * updated if (score_needs or terms.magnitude_score_grad) else None
        if weight_needs:
            # dL/dW' = M * dL/d(M W') + sign(W') * dL/dS = dL/d(M W') * (M + |W'|) with the |W'| term.
            if terms.magnitude_score_grad:
                factor = updated.abs()
                factor.add_(mask if mask is not None else 1.0)
                grad_updated = grad_effective.mul_(factor)
            else:
                grad_updated = grad_effective.mul_(mask) if mask is not None else grad_effective
            if needs[1]:
                g = grad_updated.reshape(blocks * n_b, k)
                grad_weight = g.t() if terms.transposed else g
            if needs[3]:
                grad_U = terms.beta * torch.bmm(grad_updated, _per_block(V, terms).transpose(1, 2))
                grad_U = grad_U.reshape(U.shape)
            if needs[4]:
                grad_V = terms.beta * torch.bmm(U.view(blocks, n_b, -1).transpose(1, 2), grad_updated)
                grad_V = grad_V.reshape(V.shape)
        if score_needs:
            factors = _augmented_factors(A, B, R, C, terms)
            if factors is not None:
                left, right = factors
                grad_left = torch.bmm(grad_score, right.transpose(1, 2))  # (blocks, n_b, q)
                grad_right = torch.bmm(left.transpose(1, 2), grad_score)  # (blocks, q, k)
                rank = A.shape[1] if A is not None else 0
                if A is not None:
                    grad_A = (terms.alpha1 * grad_left[:, :, :rank]).reshape(A.shape)
                    grad_B = grad_right[:, :rank].reshape(B.shape)
                if R is not None:
                    grad_R = (terms.alpha2 * grad_left[:, :, rank]).reshape(R.shape)
                    grad_C = grad_right[:, rank + 1].reshape(C.shape)
            if scores is not None:
                grad_scores = grad_score.reshape(scores.shape)
        return grad_x, grad_weight, grad_bias, grad_U, grad_V, grad_A, grad_B, grad_R, grad_C, grad_scores, None
