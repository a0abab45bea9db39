"""The sparse layer: one frozen (or trainable) weight matrix, its mask and its small matrices.

For a weight W (n outputs x k inputs) at sparsity p (docs/method.md):

    W' = W + beta U V
    S  = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T)
    M  = 0 at the floor(p n k) smallest entries of S (of each fused block), 1 elsewhere
    y  = x (M * W')^T + b

with the straight-through estimator dL/dS = dL/d(M * W') * W'. The same layer also runs the
baselines (magnitude, movement, LoRA) by switching terms on and off (see ``pst.methods``).

Once per optimizer step, not once per call: the mask and the small factors derived from
the parameters (a layer's "step state") are kept and rebuilt only when the sparsity or a
parameter entering the score has changed (an optimizer step, ``load_state_dict``, any
in-place edit), so gradient-accumulation micro-batches, gradient-checkpointing
recomputation and evaluation reuse them. The first layer needing a new state rebuilds those
of all stale layers sparsified with it, with one selection per group of same-shaped
matrices (``pst.masking``): on a GPU a step is bound by launches and host round trips, not
by arithmetic.

Mixed precision: under ``torch.autocast`` the three matrix products run in the autocast
dtype while W', the score and the mask stay in the parameters' precision, and every
gradient comes back in its parameter's dtype; a model held wholly in bf16 computes
everything in bf16. The zero count is exact either way.

Memory: the autograd function saves only the input, the parameters (no copies), the
boolean mask and the small factors; W' and M * W' are recomputed in the backward pass, so
no n x k float tensor outlives the layer's forward.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers.pytorch_utils import Conv1D

try:  # FSDP2 shards parameters as DTensors
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support
    DTensor = None

from . import base_weights
from .config import PSTConfig
from .fused import BlockLayout
from . import masking
from .masking import keep_mask, num_pruned, parse_pattern, validate_sparsity
from .methods import get_method

SUPPORTED_MODULES = (nn.Linear, Conv1D)

# Largest number of score entries selected in one stacked call by the sync-free strategy
# (bounds the temporary memory). The CPU strategy selects matrix by matrix anyway, and a large
# stack there only costs page faults (670 instead of 440 ms per BERT-base step, one thread).
_STACK_ENTRIES = 1 << 26

# Optimizer steps taken in this process. Fused optimizers (the Trainer's default
# adamw_torch_fused) update parameters without bumping their version counters, so a step
# state also remembers this count; a global post-step hook keeps it.
_optimizer_steps = 0
_step_hook = None


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _watch_optimizer_steps() -> None:
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)


def oriented_shape(module: nn.Module) -> tuple[int, int]:
    """(outputs, inputs) of an ``nn.Linear`` or a ``Conv1D`` (which stores its weight as inputs x outputs)."""
    shape = base_weights.dense_shape(module.weight)  # a packed 4-bit weight's own shape is not W's
    return (shape[1], shape[0]) if isinstance(module, Conv1D) else (shape[0], shape[1])


class _StepState:
    """What a layer derives from its parameters once per step: no autograd, no per-call work.

    ``mask``: (n, k) bool, or None when nothing is pruned. ``u``: U, or for fused layers
    U spread over the blocks' columns (n x blocks r), so that W' = W + beta u V.view(-1, k)
    is one product. ``left`` @ ``right`` = alpha1 A B + alpha2 (R 1^T + 1 C^T), each block
    with its own B and C. ``block_index``: the block of every row (fused layers only).
    keep_zeros only, during a rebuild: ``support`` (n, k) bool, the base's non-zeros, and
    ``base_pruned``, the base zeros each block prunes anyway (``pst.base_weights``).
    """

    __slots__ = ("key", "mask", "u", "left", "right", "block_index", "support", "base_pruned")

    def __init__(self, key) -> None:
        self.key = key
        self.mask = self.u = self.left = self.right = self.block_index = None
        self.support = self.base_pruned = None


class SparseLayer(nn.Module):
    """Wraps an ``nn.Linear`` or GPT-2 ``Conv1D`` for PST or one of its baselines.

    The wrapped module's ``weight`` and ``bias`` Parameters are taken over as they are (no
    copy) and keep their names, so state dicts stay recognisable. New parameters are named
    after the paper's symbols and shaped output x input whatever the wrapped module:
    ``U`` (n x r), ``V`` (r x k), ``A`` (n x r_s), ``B`` (r_s x k), ``R`` (n), ``C`` (k),
    or ``scores`` (n x k) for movement pruning. For a module fusing several matrices
    (``blocks``: a number of equal blocks or a :class:`pst.fused.BlockLayout`), each block
    has its own mask and its own V, B and C, stacked on a leading block axis (``V``:
    blocks x r x k, ``C``: blocks x k), as if the matrices were separate modules, which is
    how the paper's model is built; U, A and R stay per row.

    ``sparsity`` is a float in [0, 1) (at most 1 - N/M for an N:M pattern), moved by the schedule.
    """

    def __init__(self, base: nn.Module, config: PSTConfig, blocks: int | BlockLayout = 1) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_MODULES):
            raise TypeError(
                f"cannot sparsify a {type(base).__name__}; supported modules: nn.Linear and transformers Conv1D"
            )
        base_weights.check_base(base)  # plain float, or a quantized weight the layer can dequantize
        self.transposed = isinstance(base, Conv1D)
        self.weight = base.weight
        self.bias = base.bias
        out_features, in_features = oriented_shape(base)
        self.layout = blocks if isinstance(blocks, BlockLayout) else BlockLayout.equal(blocks, out_features)
        if self.layout.rows != out_features:
            raise ValueError(f"the fused block layout covers {self.layout.rows} rows, the module has {out_features}")
        self.spec = get_method(config.method)
        self.pattern = parse_pattern(config.pattern) if self.spec.prunes else None
        if self.pattern is not None and in_features % self.pattern[1]:
            raise ValueError(
                f"pattern {config.pattern} groups {self.pattern[1]} consecutive inputs; "
                f"{in_features} input features do not split into such groups"
            )
        self.in_features, self.out_features, self.blocks = in_features, out_features, self.layout.num_blocks
        self.method = config.method
        self.keep_zeros = config.keep_zeros
        self.beta, self.alpha1, self.alpha2 = config.beta, config.alpha1, config.alpha2
        self.magnitude_score = config.uses_magnitude_score
        self.magnitude_score_grad = self.magnitude_score and self.spec.magnitude_score_grad
        self.sparsity = 0.0
        self._state: _StepState | None = None
        self._peers: list[SparseLayer] | None = None  # layers whose states are rebuilt together
        self._create_parameters(config)
        _watch_optimizer_steps()

    def _create_parameters(self, config: PSTConfig) -> None:
        n, k, blocks = self.out_features, self.in_features, self.blocks
        like = {"device": self.weight.device, "dtype": self.dtype}

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

    @property
    def dtype(self) -> torch.dtype:
        """W's float dtype: the weight's own, or what a quantized weight dequantizes to (``pst.base_weights``)."""
        return base_weights.float_dtype(self.weight)

    @property
    def sparsity(self) -> float:
        return self._sparsity

    @sparsity.setter
    def sparsity(self, value: float) -> None:
        validate_sparsity(float(value), self.pattern)
        self._sparsity = float(value)

    def method_parameters(self) -> list[nn.Parameter]:
        """Parameters this layer added to the model (not the wrapped weight and bias)."""
        return [p for p in (self.U, self.V, self.A, self.B, self.R, self.C, self.scores) if p is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._step_state()
        dtype = self.dtype
        if dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):  # autocast leaves fp64 alone
            dtype = torch.get_autocast_dtype(x.device.type)
        return SparseLinearFunction.apply(
            x, self.weight, self.bias, self.U, self.V, self.A, self.B, self.R, self.C, self.scores, self, state, dtype
        )

    # -- the step state ---------------------------------------------------------------------
    def _step_state(self) -> _StepState:
        """This step's mask and factors, rebuilt (with those of stale peers) when out of date."""
        if self._state is None or self._state.key != self._state_key():
            # A copy made by nn.DataParallel shares its original's peers without being one of them.
            peers = self._peers if self._peers and self in self._peers else [self]
            # Under FSDP only this sharding unit's weights are gathered: peers in other units
            # rebuild their own states when their unit runs.
            refresh_step_states([self] + [peer for peer in peers if peer is not self and peer._weights_present()])
        return self._state

    def _weights_present(self) -> bool:
        """Whether every tensor entering the state is here in full: not an FSDP shard (a DTensor,
        or FSDP1's flattened view) nor on another device."""
        expected = (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)
        tensors = [t for t in (self.weight, self.U, self.V, self.A, self.B, self.R, self.C, self.scores) if t is not None]
        return (
            tuple(base_weights.dense_shape(self.weight)) == expected
            and not any(_is_shard(t) or t.device != self.weight.device for t in tensors)
        )

    def get_extra_state(self) -> torch.Tensor:
        """The current sparsity travels in the state dict (a tensor, so safetensors can store it):
        a checkpoint reloaded without its schedule is not silently dense."""
        return torch.tensor([self._sparsity], dtype=torch.float64)

    def set_extra_state(self, state) -> None:
        self.sparsity = float(state[0] if isinstance(state, torch.Tensor) else state)

    def invalidate(self) -> None:
        """Forget the step state: needed only after edits torch does not track (through ``.data``)."""
        self._state = None

    def _state_key(self) -> tuple:
        tensors = (self.weight, self.U, self.V, self.A, self.B, self.R, self.C, self.scores)
        versions = tuple((t._version, t.data_ptr(), t.dtype) for t in tensors if t is not None)
        return (_optimizer_steps, self._sparsity, versions)

    def _block_prunes(self, state: _StepState) -> list[int]:
        """Entries pruned in each block (0 for methods that do not prune); keep_zeros: at least the base's zeros."""
        if not self.spec.prunes:
            return [0] * self.blocks
        k = self.in_features
        prunes = [num_pruned(self._sparsity, self.layout.block_rows(j) * k) for j in range(self.blocks)]
        if state.base_pruned is not None:
            prunes = [max(prune, zeros) for prune, zeros in zip(prunes, state.base_pruned)]
            if prunes != state.base_pruned and not (self.magnitude_score or self.A is not None or self.R is not None):
                raise ValueError(
                    f"sparsity {self._sparsity} asks this keep_zeros layer to prune beyond the base's zeros, but it "
                    "was sparsified with sparsity 0 (no score); use PSTConfig(keep_zeros=True, sparsity=p) to prune further"
                )
        return prunes

    def _new_state(self, key) -> _StepState:
        """The factors of a new step state (the mask is filled in by the grouped selection)."""
        state = _StepState(key)
        n, k, blocks = self.out_features, self.in_features, self.blocks
        like = {"device": self.weight.device, "dtype": self.dtype}
        if self.keep_zeros and self.spec.prunes:
            state.support = base_weights.support(self._oriented(self.weight))
            state.base_pruned = base_weights.base_pruned(state.support, self.layout, self.pattern)
        if blocks > 1:
            state.block_index = self.layout.block_index(self.weight.device)
            one_hot = state.block_index.unsqueeze(1) == torch.arange(blocks, device=self.weight.device)

        def spread(per_row: torch.Tensor) -> torch.Tensor:  # (n, r) -> (n, blocks r), zero off the row's block
            if blocks == 1:
                return per_row
            return (per_row.unsqueeze(1) * one_hot.unsqueeze(2)).reshape(n, -1)

        if self.U is not None:
            state.u = spread(self.U)
        left, right = [], []
        if self.A is not None:
            left.append(self.alpha1 * spread(self.A))
            right.append(self.B.view(-1, k))
        if self.R is not None:
            columns = one_hot.to(like["dtype"]) if blocks > 1 else torch.ones(n, 1, **like)
            left += [self.alpha2 * self.R.unsqueeze(1), self.alpha2 * columns]
            right += [torch.ones(1, k, **like), self.C.view(-1, k)]
        if left:
            state.left, state.right = torch.cat(left, dim=1), torch.cat(right, dim=0)
        return state

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight parameter in output x input orientation: a view, or this layer's dequantized W (``pst.base_weights``)."""
        weight = base_weights.dequantized(weight)
        return weight.t() if self.transposed else weight

    def _updated(self, weight: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor | None) -> torch.Tensor:
        """W' = W + beta u V as (n, k) in the parameters' dtype; the weight itself without an update."""
        w = self._oriented(weight)
        if u is None:
            return w
        return torch.addmm(w, u, V.view(-1, self.in_features), alpha=self.beta)

    def _block_score(self, state: _StepState, block: int, out: torch.Tensor) -> None:
        """S of one block written into ``out`` (repeats, block rows, k), computed where it lands."""
        rows = self.layout.rows_of
        repeats, k = out.shape[0], self.in_features
        filled = False
        if self.magnitude_score:
            w = rows(self._oriented(self.weight), block)
            if state.u is not None:
                v = self.V.view(-1, k).expand(repeats, -1, -1)
                torch.baddbmm(w, rows(state.u, block), v, alpha=self.beta, out=out).abs_()
            else:
                torch.abs(w, out=out)
            filled = True
        if state.left is not None:
            left, right = rows(state.left, block), state.right.expand(repeats, -1, -1)
            out.baddbmm_(left, right) if filled else torch.bmm(left, right, out=out)
            filled = True
        if self.scores is not None:
            out.add_(rows(self.scores, block)) if filled else out.copy_(rows(self.scores, block))
            filled = True
        if not filled:
            raise ValueError(f"this {self.method} layer has no score term")
        if self.keep_zeros:  # the base's zeros go first
            support = state.support if state.support is not None else base_weights.support(self._oriented(self.weight))
            out.masked_fill_(~rows(support, block), -torch.inf)

    def _set_block_mask(self, state: _StepState, block: int, keep: torch.Tensor | None) -> None:
        """``keep``: the selection's mask of the block; keep_zeros: ANDed with the support (None: the support alone)."""
        target = self.layout.rows_of(state.mask, block)
        if state.support is None:
            target.copy_(keep.view(self.layout.repeats, -1, self.in_features))
        elif keep is None:
            target.copy_(self.layout.rows_of(state.support, block))
        else:  # an N:M group holding more zeros than M - N: the extra ones are no candidates, still zero
            torch.logical_and(keep.view(target.shape), self.layout.rows_of(state.support, block), out=target)

    # -- inspection and export ------------------------------------------------------------
    @torch.no_grad()
    def score(self) -> torch.Tensor:
        """S, the importance score the mask is selected from, in output x input orientation."""
        state = self._step_state()
        score = torch.empty(self.out_features, self.in_features, dtype=self.dtype, device=self.weight.device)
        with _without_autocast(self.weight.device.type):
            for block in range(self.blocks):
                part = torch.empty(self.layout.repeats, self.layout.sizes[block], self.in_features, dtype=score.dtype,
                                   device=score.device)
                self._block_score(state, block, part)
                self.layout.rows_of(score, block).copy_(part)
        return score

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """M * W' in output x input orientation, as the forward pass uses it."""
        state = self._step_state()
        with _without_autocast(self.weight.device.type):
            updated = self._updated(self.weight, state.u, self.V)
        return _masked(updated, state.mask, updated.dtype) if state.mask is not None else updated.clone()

    @torch.no_grad()
    def to_plain_module(self) -> nn.Module:
        """A plain ``nn.Linear``/``Conv1D`` holding M * W' (the wrapped bias is reused)."""
        merged = self.effective_weight()
        if self.transposed:
            module = Conv1D(self.out_features, self.in_features)
            merged = merged.t()
        else:
            module = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        module.to(device=self.weight.device, dtype=self.dtype)
        module.weight = nn.Parameter(merged.contiguous())
        if self.bias is not None:
            module.bias = self.bias
        return module

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, in_features={self.in_features}, out_features={self.out_features}, "
            f"blocks={self.blocks}, sparsity={self.sparsity:.4f}"
        )


def _is_shard(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def link_peers(layers: list[SparseLayer]) -> None:
    """Let these layers rebuild their step states together (``pst.sparsify`` links a model's layers)."""
    for layer in layers:
        layer._peers = layers


def refresh_step_states(layers: list[SparseLayer]) -> None:
    """Rebuild the step state of every stale layer, masks by one selection per group of same-shaped blocks.

    With the sync-free strategy (accelerators), blocks with the same number of entries,
    pruned count, pattern, dtype and device are stacked (in chunks of at most
    ``_STACK_ENTRIES`` entries) and selected in one call; each block's score is computed
    straight into its row of the stack.
    """
    groups: dict[tuple, list] = defaultdict(list)
    fresh, masked, exact = [], defaultdict(list), []
    # Step states are never inference tensors: they are saved for backward in later training steps.
    with torch.inference_mode(False), torch.no_grad():
        for layer in layers:
            key = layer._state_key()
            if layer._state is not None and layer._state.key == key:
                continue
            with _without_autocast(layer.weight.device.type):
                state = layer._new_state(key)
            fresh.append((layer, state))
            prunes = layer._block_prunes(state)
            if not any(prunes):
                continue
            masked[layer.weight.device].append((layer, state))
            k = layer.in_features
            for block, prune in enumerate(prunes):
                if state.base_pruned is not None and prune == state.base_pruned[block]:
                    exact.append((layer, state, block))  # keep_zeros: the base's own zeros, nothing to select
                    continue
                numel = layer.layout.block_rows(block) * k
                signature = (numel, prune, layer.pattern, layer.dtype, layer.weight.device)
                groups[signature].append((layer, state, block))
        for device, states in masked.items():
            _allocate_masks(states, device)
        for layer, state, block in exact:
            layer._set_block_mask(state, block, None)
        for (numel, prune, pattern, dtype, device), members in groups.items():
            per_chunk = max(1, _STACK_ENTRIES // numel) if masking.default_strategy(device) == "topk" else 1
            with _without_autocast(device.type):
                for start in range(0, len(members), per_chunk):
                    _select(members[start : start + per_chunk], numel, prune, pattern, dtype, device)
    for layer, state in fresh:  # only complete states are ever used
        state.support = state.base_pruned = None  # keep_zeros: n x k bools the step does not need
        layer._state = state


def _allocate_masks(states: list, device: torch.device) -> None:
    """All masks of a rebuild in one block: kept for a whole step, many separate blocks would
    fragment the heap around the step's temporaries (on CPU, 5% more peak memory)."""
    sizes = [layer.out_features * layer.in_features for layer, _ in states]
    flat = torch.empty(sum(sizes), dtype=torch.bool, device=device)
    for (layer, state), part in zip(states, flat.split(sizes)):
        state.mask = part.view(layer.out_features, layer.in_features)


def _select(members: list, numel: int, prune: int, pattern, dtype: torch.dtype, device: torch.device) -> None:
    if prune == 0:  # a block left whole beside pruned blocks of the same layer
        keep = torch.ones(len(members), numel, dtype=torch.bool, device=device)
    else:
        scores = torch.empty(len(members), numel, dtype=dtype, device=device)
        for row, (layer, state, block) in enumerate(members):
            layer._block_score(state, block, scores[row].view(layer.layout.repeats, -1, layer.in_features))
        keep = keep_mask(scores, prune, pattern)
    for row, (layer, state, block) in enumerate(members):
        layer._set_block_mask(state, block, keep[row])


def _without_autocast(device_type: str):
    """Autocast off, for products that must stay in the parameters' precision."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _masked(updated: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """M * W' in ``dtype``, in one pass (the product is written straight in the compute dtype)."""
    if mask is None:
        return updated.to(dtype)
    return torch.mul(updated, _as_factor(mask), out=torch.empty(updated.shape, dtype=dtype, device=updated.device))


def _as_factor(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as uint8 (a free view) for products: CPU kernels cast uint8 twice as fast as bool."""
    return mask.view(torch.uint8)


class SparseLinearFunction(torch.autograd.Function):
    """y = x (M * W')^T + b with the straight-through estimator, recomputing in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, U, V, A, B, R, C, scores, layer: SparseLayer, state: _StepState, dtype):
        with _without_autocast(x.device.type):
            x = x.to(dtype)
            effective = _masked(layer._updated(weight, state.u, V), state.mask, dtype)
            y = nn.functional.linear(x, effective, None if bias is None else bias.to(dtype))
        ctx.layer = layer
        ctx.save_for_backward(x, weight, U, V, A, B, R, C, scores, state.mask, state.u, state.left, state.right,
                              state.block_index)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, U, V, A, B, R, C, scores, mask, u, left, right, block_index = ctx.saved_tensors
        layer: SparseLayer = ctx.layer
        with _without_autocast(grad_y.device.type):
            grads = _backward(layer, ctx.needs_input_grad, grad_y.to(x.dtype), x, weight, U, V, A, B, R, C, scores,
                              mask, u, left, right, block_index)
        return (*grads, None, None, None)


def _backward(layer, needs, grad_y, x, weight, U, V, A, B, R, C, scores, mask, u, left, right, block_index):
    n, k = layer.out_features, layer.in_features
    grad_x = grad_weight = grad_bias = grad_U = grad_V = grad_A = grad_B = grad_R = grad_C = grad_scores = None
    grad_y = grad_y.reshape(-1, n)
    updated = layer._updated(weight, u, V)
    if needs[0]:
        grad_x = (grad_y @ _masked(updated, mask, x.dtype)).view(x.shape)
    if needs[2]:
        grad_bias = grad_y.sum(0)
    score_needs = any(needs[i] for i in (5, 6, 7, 8, 9))
    weight_needs = needs[1] or needs[3] or needs[4]
    if score_needs or weight_needs:
        # dL/d(M * W'), the dense gradient every method needs: the third matrix product of a layer.
        grad_effective = grad_y.t() @ x.reshape(-1, k)
        # Straight-through: dL/dS = dL/dM = dL/d(M * W') * W' (in at least the parameters' precision).
        grad_score = grad_effective * updated if (score_needs or layer.magnitude_score_grad) else None
        if weight_needs:
            if layer.magnitude_score_grad:
                # dL/dW' = M * dL/d(M W') + sign(W') * dL/dS, and sign(W') dL/dS = copysign(dL/dS, dL/d(M W')).
                grad_updated = torch.copysign(grad_score, grad_effective)
                if mask is not None:
                    grad_updated.addcmul_(grad_effective, _as_factor(mask))
                else:
                    grad_updated.add_(grad_effective)
            else:
                grad_updated = grad_effective * _as_factor(mask) if mask is not None else grad_effective
            if needs[1]:
                grad_weight = grad_updated.t() if layer.transposed else grad_updated
            # Rank-r products put the small factor first (twice as fast on CPU as G @ V^T) and
            # cast it to the n x k gradient's dtype, never the other way round.
            dtype = grad_updated.dtype
            if needs[3]:
                grad_U = _fold(layer.beta * (V.view(-1, k).to(dtype) @ grad_updated.t()).t(), block_index, layer.blocks)
            if needs[4]:
                grad_V = (layer.beta * (u.t().to(dtype) @ grad_updated)).view(V.shape)
        if score_needs and left is not None:
            grad_left = (right.to(grad_score.dtype) @ grad_score.t()).t()  # (n, q): A's and R's columns
            grad_right = left.t().to(grad_score.dtype) @ grad_score  # (q, k): B's and C's rows
            a_cols = 0
            if A is not None:
                a_cols = layer.blocks * A.shape[1]
                grad_A = _fold(layer.alpha1 * grad_left[:, :a_cols], block_index, layer.blocks)
                grad_B = grad_right[:a_cols].view(B.shape)
            if R is not None:
                grad_R = layer.alpha2 * grad_left[:, a_cols]
                grad_C = grad_right[a_cols + 1 :].view(C.shape)
        if scores is not None and score_needs:
            grad_scores = grad_score
    grads = (grad_x, grad_weight, grad_bias, grad_U, grad_V, grad_A, grad_B, grad_R, grad_C, grad_scores)
    params = (x, weight, weight, U, V, A, B, R, C, scores)  # the bias has the weight's dtype
    return tuple(g if g is None else g.to(p.dtype) for g, p in zip(grads, params))


def _fold(spread: torch.Tensor, block_index: torch.Tensor | None, blocks: int) -> torch.Tensor:
    """Gradient of a spread factor (n, blocks r) back to its per-row parameter (n, r)."""
    if block_index is None:
        return spread
    n = spread.shape[0]
    per_block = spread.reshape(n, blocks, -1)
    return per_block.gather(1, block_index.view(n, 1, 1).expand(n, 1, per_block.shape[2])).squeeze(1)
