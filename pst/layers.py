"""The sparse layer: one frozen (or trainable) weight matrix, its mask and its small matrices.

For a weight W (n outputs x k inputs) at sparsity p (docs/method.md):

    W' = W + beta U V
    S  = |W'| + alpha1 A B + alpha2 (R 1^T + 1 C^T)
    M  = 0 at the floor(p n k) smallest entries of S (of each fused block), 1 elsewhere
    y  = x (M * W')^T + b

with the straight-through estimator dL/dS = dL/d(M * W') * W'. The same layer also runs the
baselines (magnitude, movement, LoRA) by switching terms on and off (see ``pst.methods``).

Once per optimizer step, not once per call: the mask, one bit per weight in a buffer each
layer allocates once and rewrites in place, is rebuilt only when the sparsity or a parameter
entering the score has changed (an optimizer step, ``load_state_dict``, any in-place edit),
so gradient-accumulation micro-batches, gradient-checkpointing recomputation and evaluation
reuse it. The schedule rebuilds all masks after each of its steps (``pst.refresh_masks``); in
an eager forward, the first layer finding its mask stale rebuilds those of all stale layers
sparsified with it whose weights are present (under FSDP, its sharding unit's), with one
selection per group of same-shaped matrices (``pst.masking``): on a GPU a step is bound by
launches and host round trips, not by arithmetic. The forward and backward themselves read
only tensors and constants, so ``torch.compile`` traces a layer whole.

Mixed precision: under ``torch.autocast`` the three matrix products run in the autocast
dtype while W', the score and the mask stay in the parameters' precision, and every
gradient comes back in its parameter's dtype; a model held wholly in bf16 computes
everything in bf16. The zero count is exact either way.

Memory: the autograd function saves only the input, the parameters (no copies) and the mask
bits; W' and M * W' are recomputed in the backward pass, so no n x k float tensor outlives
the layer's forward, and at most two live at once inside it (besides the unpacked mask). With
``mask_storage="threshold"`` there are no bits either: the selection keeps the threshold and
where its ties stop being pruned (``pst.masking.Threshold``), and each pass recomputes S by
the selection's own ops (:func:`_score_rows`) and compares. On
the reference path a matrix of more than ``_ROW_CHUNK_ENTRIES`` entries (an LLM's) is built,
differentiated and selected a chunk of rows at a time, so those temporaries are chunk-sized.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers.pytorch_utils import Conv1D

try:  # FSDP2 shards parameters as DTensors
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support
    DTensor = None

from . import base_weights, kernels
from .config import PSTConfig
from .fused import BlockLayout
from . import masking
from .masking import keep_mask, num_pruned, parse_pattern, validate_sparsity

SUPPORTED_MODULES = (nn.Linear, Conv1D)

# Largest number of score entries selected in one stacked call by the sync-free strategy
# (bounds the temporary memory). The CPU strategy selects matrix by matrix anyway, and a large
# stack there only costs page faults (670 instead of 440 ms per BERT-base step, one thread).
_STACK_ENTRIES = 1 << 26

# The reference path builds M * W' and the gradients of a matrix larger than this many
# entries a chunk of whole rows at a time, so that its n x k temporaries (W', the unpacked
# mask, dL/dW') stay a few MiB at LLM widths instead of copies of the whole matrix, which
# LoRA never makes. BERT-base's matrices (2.4M entries at most) run in one piece.
_ROW_CHUNK_ENTRIES = 1 << 22

# Optimizer steps taken in this process. Fused optimizers (the Trainer's default
# adamw_torch_fused) update parameters without bumping their version counters, so a mask
# also remembers this count; a global post-step hook keeps it.
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


@dataclass(frozen=True)
class LayerSpec:
    """The static facts of a layer that its forward and backward need (constants to a compiler)."""

    out_features: int
    in_features: int
    transposed: bool  # a Conv1D stores its weight as inputs x outputs
    beta: float
    alpha1: float
    alpha2: float
    magnitude_score: bool  # S has the term |W'|
    magnitude_score_grad: bool  # the straight-through gradient reaches W' through |W'|


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

    ``sparsity`` is a float in [0, 1) (at most 1 - N/M for an N:M pattern), moved by the
    schedule, and saved in the state dict (extra state).
    """

    def __init__(self, base: nn.Module, config: PSTConfig, blocks: int | BlockLayout = 1) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_MODULES):
            raise TypeError(
                f"cannot sparsify a {type(base).__name__}; supported modules: nn.Linear and transformers Conv1D"
            )
        base_weights.check_base(base, config.spec.trains_pretrained)
        self.transposed = isinstance(base, Conv1D)
        self.weight = base.weight
        self.bias = base.bias
        out_features, in_features = oriented_shape(base)
        self.layout = blocks if isinstance(blocks, BlockLayout) else BlockLayout.equal(blocks, out_features)
        if self.layout.rows != out_features:
            raise ValueError(f"the fused block layout covers {self.layout.rows} rows, the module has {out_features}")
        self.spec = config.spec
        self.pattern = parse_pattern(config.pattern) if self.spec.prunes else None
        if self.pattern is not None and in_features % self.pattern[1]:
            raise ValueError(
                f"pattern {config.pattern} groups {self.pattern[1]} consecutive inputs; "
                f"{in_features} input features do not split into such groups"
            )
        self.in_features, self.out_features, self.blocks = in_features, out_features, self.layout.num_blocks
        self.method = config.method
        self.keep_zeros = config.keep_zeros  # the base's zeros are always pruned
        self.magnitude_score = config.uses_magnitude_score
        self.static = LayerSpec(out_features, in_features, self.transposed, config.beta, config.alpha1, config.alpha2,
                                self.magnitude_score, self.magnitude_score and self.spec.magnitude_score_grad)
        self.sparsity = 0.0
        # The mask, one bit per weight (row-major, output x input), rewritten in place once per step.
        self._mask_bits: torch.Tensor | None = None
        # Or, with mask_storage="threshold", what selected it (``pst.masking.Threshold``), no bits at all.
        self.mask_storage = config.mask_storage
        if self.spec.prunes and self.mask_storage == "threshold" and self.blocks > 1:
            raise ValueError(f"mask_storage='threshold' keeps one threshold per matrix, and this module fuses "
                             f"{self.blocks} (fused_modules): sparsify it with mask_storage='bits'")
        self._threshold: masking.Threshold | None = None
        self._mask_key = None  # what the mask was built from (see _state_key)
        self._peers: list[SparseLayer] | None = None  # layers whose masks are rebuilt together
        # Pruned counts held on the device, set by a capturable schedule (``pst.device_schedule``).
        self.device_prunes = None
        self._create_parameters(config)
        self._create_constants()
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

    def _create_constants(self) -> None:
        """Per-layer constants, built once (buffers, so they follow ``.to()``; never saved)."""
        device = self.weight.device
        # A fused layer's one-hot row -> block map: spreads a per-row factor over the blocks' columns.
        # The fused kernels (``pst.kernels``) read each row's block instead.
        one_hot = block_of_row = None
        if self.blocks > 1:
            block_index = self.layout.block_index(device)
            one_hot = (block_index.unsqueeze(1) == torch.arange(self.blocks, device=device)).to(self.dtype)
            block_of_row = block_index.to(torch.int32)
        self.register_buffer("block_one_hot", one_hot, persistent=False)
        self.register_buffer("block_of_row", block_of_row, persistent=False)
        table = bit_table(self.dtype, device) if self.spec.prunes and self.mask_storage == "bits" else None
        self.register_buffer("bit_table", table, persistent=False)  # unpacks it, in W's dtype

    # The score's and update's scales, read from the one place the autograd function reads them.
    @property
    def beta(self) -> float:
        return self.static.beta

    @property
    def alpha1(self) -> float:
        return self.static.alpha1

    @property
    def alpha2(self) -> float:
        return self.static.alpha2

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

    def get_extra_state(self) -> torch.Tensor:
        """The current sparsity travels in the state dict (a tensor, so safetensors can store it):
        a checkpoint reloaded without its schedule is not silently dense."""
        return torch.tensor([self._sparsity], dtype=torch.float64)

    def set_extra_state(self, state) -> None:
        self.sparsity = float(state[0] if isinstance(state, torch.Tensor) else state)

    def method_parameters(self) -> list[nn.Parameter]:
        """Parameters this layer added to the model (not the wrapped weight and bias)."""
        return [p for p in (self.U, self.V, self.A, self.B, self.R, self.C, self.scores) if p is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.prunes and not torch.compiler.is_compiling():
            self.refresh_mask()  # eager only: a compiled step reads the mask its schedule refreshed
        if self.spec.prunes and self.mask_storage == "threshold" and torch.compiler.is_compiling():
            raise RuntimeError("mask_storage='threshold' runs eagerly: its threshold is a Python number a "
                               "compiled graph would be specialised on, and recompiled for, at every step; "
                               "use mask_storage='bits' with torch.compile")
        dtype = self.dtype
        if dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):  # autocast leaves fp64 alone
            dtype = torch.get_autocast_dtype(x.device.type)
        return SparseLinearFunction.apply(
            x, self.weight, self.bias, self.U, self.V, self.A, self.B, self.R, self.C, self.scores,
            self._mask_bits, self._threshold, self.bit_table, self.block_one_hot, self.block_of_row, self.static, dtype,
        )

    # -- the mask ---------------------------------------------------------------------------
    def refresh_mask(self) -> None:
        """Rebuild this step's mask (and those of stale peers) if a parameter or the sparsity changed."""
        if self._mask_key is None or self._mask_key != self._state_key():
            self._require_whole_weights()
            # A copy made by nn.DataParallel shares its original's peers without being one of them.
            peers = self._peers if self._peers and self in self._peers else [self]
            # Under FSDP only this sharding unit's weights are gathered: peers in other units
            # rebuild their own masks when their unit runs.
            refresh_step_states([self] + [peer for peer in peers if peer is not self and peer._weights_present()])

    def invalidate(self) -> None:
        """Forget the mask: needed only after edits torch does not track (through ``.data``)."""
        self._mask_key = None

    def _state_key(self) -> tuple:
        tensors = (self.weight, self.U, self.V, self.A, self.B, self.R, self.C, self.scores)
        versions = tuple((t._version, t.data_ptr(), t.dtype) for t in tensors if t is not None)
        return (_optimizer_steps, self._sparsity, versions)

    def _weights_present(self) -> bool:
        """Whether every tensor entering the mask is here in full: not an FSDP shard (a DTensor,
        or FSDP1's flattened view) nor on another device."""
        expected = (self.in_features, self.out_features) if self.transposed else (self.out_features, self.in_features)
        tensors = [t for t in (self.weight, self.U, self.V, self.A, self.B, self.R, self.C, self.scores) if t is not None]
        return tuple(base_weights.dense_shape(self.weight)) == expected and not any(
            _is_shard(t) or t.device != self.weight.device for t in tensors
        )

    def _require_whole_weights(self) -> None:
        if not self._weights_present():
            raise ValueError(
                "this layer's weights are sharded (FSDP): its mask, score and effective weight need them "
                "whole; read them inside `with pst.distributed.gathered(model):` on every rank, or use "
                "pst.sparsity_report(model)"
            )

    def _replicate_for_data_parallel(self):
        replica = super()._replicate_for_data_parallel()
        replica._mask_bits, replica._threshold, replica._mask_key = None, None, None  # each replica builds its own
        replica.device_prunes = None  # from the host's counts: the table is on the original's device
        return replica

    def _mask_buffer(self) -> torch.Tensor:
        """The mask's bits, allocated once (again only after a move to another device)."""
        if self._mask_bits is None or self._mask_bits.device != self.weight.device:
            self._mask_bits = torch.empty((self.out_features * self.in_features + 7) // 8, dtype=torch.uint8,
                                          device=self.weight.device)
        return self._mask_bits

    def _block_bits(self, block: int) -> torch.Tensor | None:
        """A block's mask within the layer's bits: a slice where its rows are contiguous and every
        block fills whole bytes, else ``None`` (the blocks are then packed together)."""
        layout, k = self.layout, self.in_features
        if self.blocks == 1:
            return self._mask_bits
        if layout.repeats > 1 or any(size * k % 8 for size in layout.sizes):
            return None
        start = sum(layout.sizes[:block]) * k // 8
        return self._mask_bits[start : start + layout.sizes[block] * k // 8]

    @torch.no_grad()
    def mask(self) -> torch.Tensor | None:
        """M as an (n, k) bool tensor (output x input), or None for methods that do not prune."""
        if not self.spec.prunes:
            return None
        self.refresh_mask()
        if self._threshold is not None:  # S as the selection computed it, compared whole
            return self._threshold.keep(self.score())
        return unpack_mask(self._mask_bits, self.bit_table, self.out_features, self.in_features).bool()

    def _block_prunes(self) -> list[int]:
        """Entries pruned in each block (0 for methods that do not prune)."""
        if not self.spec.prunes:
            return [0] * self.blocks
        k = self.in_features
        return [num_pruned(self._sparsity, self.layout.block_rows(j) * k) for j in range(self.blocks)]

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight parameter in output x input orientation: a view, or this layer's dequantized W (``pst.base_weights``)."""
        return _output_by_input(weight, self.transposed)

    def _block_score(self, block: int, out: torch.Tensor, span: slice | None = None,
                     oriented: torch.Tensor | None = None, span_weight: torch.Tensor | None = None) -> None:
        """S of one block written into ``out`` (repeats, block rows, k), computed where it lands;
        with ``span``, only those of the block's rows (in each repetition). Where the caller has
        read W already: ``oriented``, W as (n, k) (a quantized base, dequantized once for all
        blocks); ``span_weight``, the span's rows of an unfused W (dequantized alone)."""
        def rows(tensor: torch.Tensor, block: int) -> torch.Tensor:
            whole = self.layout.rows_of(tensor, block)
            return whole if span is None else whole[:, span]

        k = self.in_features
        filled = False

        def per_block(parameter: torch.Tensor | None) -> torch.Tensor | None:  # the block's V, B or C
            return parameter[block] if self.blocks > 1 and parameter is not None else parameter

        # W (dequantized, for a quantized base) only where the score reads it.
        if oriented is None and span_weight is None and self.magnitude_score:
            oriented = self._oriented(self.weight)
        has_term = self.magnitude_score or self.A is not None or self.R is not None
        if has_term and self.scores is None and span is None and kernels.enabled(out):  # one fused pass
            layout = self.layout
            kernels.block_score(out.view(-1, k), oriented if oriented is not None else out.view(-1, k), self.U,
                                per_block(self.V), self.A, per_block(self.B), self.R, per_block(self.C),
                                sum(layout.sizes[:block]), layout.sizes[block], layout.period, self.beta,
                                self.alpha1, self.alpha2, self.magnitude_score)
            return
        if self.magnitude_score:
            w = span_weight.unsqueeze(0) if span_weight is not None else rows(oriented, block)
            if self.U is not None:
                v = per_block(self.V).expand(out.shape[0], -1, -1)
                torch.baddbmm(w, rows(self.U, block), v, alpha=self.beta, out=out).abs_()
            else:
                torch.abs(w, out=out)
            filled = True
        filled = _add_score_terms(self.static, out, None if self.A is None else rows(self.A, block), per_block(self.B),
                                  None if self.R is None else rows(self.R.unsqueeze(1), block), per_block(self.C),
                                  filled)
        if self.scores is not None:
            out.add_(rows(self.scores, block)) if filled else out.copy_(rows(self.scores, block))
            filled = True
        if not filled:
            raise ValueError(f"this {self.method} layer has no score term")

    def _rows_score(self, w_rows, rows: slice) -> torch.Tensor:
        """S of rows ``rows``, by the ops every pass of a threshold-kept mask repeats; ``w_rows``
        reads W's rows (``pst.base_weights.row_reader``)."""
        updated = updated_weight(self.static, w_rows(rows), _rows(self.U, rows), self.V, None)
        return _score_rows(self.static, updated, _rows(self.A, rows), self.B, _rows(self.R, rows), self.C,
                           _rows(self.scores, rows))

    # -- inspection and export ------------------------------------------------------------
    @torch.no_grad()
    def score(self) -> torch.Tensor:
        """S, the importance score the mask is selected from, in output x input orientation."""
        self._require_whole_weights()
        if self.mask_storage == "threshold" and self.blocks == 1:  # as its selection computes it
            w = base_weights.row_reader(self.weight, self.transposed)
            with _without_autocast(self.weight.device.type):
                return torch.cat([self._rows_score(w, rows) for rows in _row_chunks(self.out_features,
                                                                                      self.in_features)])
        score = torch.empty(self.out_features, self.in_features, dtype=self.dtype, device=self.weight.device)
        oriented = self._oriented(self.weight) if self.magnitude_score else None
        with _without_autocast(self.weight.device.type):
            for block in range(self.blocks):
                part = torch.empty(self.layout.repeats, self.layout.sizes[block], self.in_features, dtype=score.dtype,
                                   device=score.device)
                self._block_score(block, part, oriented=oriented)
                self.layout.rows_of(score, block).copy_(part)
        return score

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """M * W' in output x input orientation, as the forward pass uses it."""
        mask = self.mask()
        with _without_autocast(self.weight.device.type):
            updated = updated_weight(self.static, self._oriented(self.weight), self.U, self.V, self.block_one_hot)
        return updated * mask if mask is not None else updated.clone()

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
    """Let these layers rebuild their masks together (``pst.sparsify`` links a model's layers)."""
    for layer in layers:
        layer._peers = layers


def refresh_step_states(layers: list[SparseLayer]) -> None:
    """Rebuild the mask of every stale layer, by one selection per group of same-shaped blocks.

    With the sync-free strategy (accelerators), blocks with the same number of entries,
    pruned count, pattern, dtype and device are stacked (in chunks of at most
    ``_STACK_ENTRIES`` entries) and selected in one call; each block's score is computed
    straight into its row of the stack. Every mask is written into its layer's bits in
    place: old and new masks never coexist.

    A layer given ``device_prunes`` (a capturable schedule) takes its pruned counts from the
    device and is selected by ``"sort"``, with no decision on the host's count: the same ops
    whatever the step.
    """
    groups: dict[tuple, list] = defaultdict(list)
    fresh, fused = [], []
    # Masks are never inference tensors: they are saved for backward in later training steps.
    with torch.inference_mode(False), torch.no_grad():
        for layer in layers:
            if not layer.spec.prunes:
                continue
            key = layer._state_key()
            if layer._mask_key == key:
                continue
            fresh.append((layer, key))
            prunes = layer._block_prunes()
            on_device = layer.device_prunes
            if layer.mask_storage == "threshold":  # (a capturable schedule refuses these layers)
                _select_threshold(layer, prunes[0])
                continue
            bits = layer._mask_buffer()
            support = exact = None
            if layer.keep_zeros and on_device is not None:
                raise ValueError("keep_zeros counts the base's zeros on the host: it cannot take its pruned "
                                 "counts from the device (a capturable schedule)")
            if layer.keep_zeros:  # at least the base's zeros, pruned first
                support = base_weights.support(layer._oriented(layer.weight))
                scored = layer.magnitude_score or layer.A is not None or layer.R is not None
                prunes, exact = base_weights.keep_zeros_prunes(prunes, support, layer.layout, layer.pattern, scored=scored)
                if all(exact):  # exactly the base's zeros: nothing to select
                    pack_mask(support, out=bits)
                    continue
            if not any(prunes) and on_device is None:
                bits.fill_(0xFF)
                continue
            # A fused layer's blocks are selected apart; each writes its own bytes of the mask, or, where
            # blocks interleave or share a byte, they are packed together (keep_zeros: into the support).
            whole = support
            if whole is None and layer._block_bits(0) is None:
                whole = torch.empty(layer.out_features, layer.in_features, dtype=torch.bool, device=bits.device)
            if whole is not None:
                fused.append((layer, whole))
            k = layer.in_features
            for block, prune in enumerate(prunes):
                if exact is not None and exact[block]:  # keep_zeros: the support already in ``whole``
                    continue
                numel = layer.layout.block_rows(block) * k
                count = prune if on_device is None else on_device
                signature = (numel, count, layer.pattern, layer.dtype, layer.weight.device)
                groups[signature].append((layer, block, whole))
        for (numel, count, pattern, dtype, device), members in groups.items():
            prune = count if isinstance(count, int) else count.count(numel, device)
            sync_free = not isinstance(prune, int) or masking.default_strategy(device) == "topk"
            per_chunk = max(1, _STACK_ENTRIES // numel) if sync_free else 1  # sync-free strategies stack
            with _without_autocast(device.type):
                for start in range(0, len(members), per_chunk):
                    stack = members[start : start + per_chunk]
                    if not (sync_free or numel <= _ROW_CHUNK_ENTRIES) and _select_by_rows(*stack[0], prune, pattern):
                        continue
                    _select(stack, numel, prune, pattern, dtype, device, sync_free)
        for layer, whole in fused:
            pack_mask(whole, out=layer._mask_bits)
    for layer, key in fresh:  # only complete masks are ever used
        layer._mask_key = key


def _select_threshold(layer: SparseLayer, prune: int) -> None:
    """A threshold-kept mask's selection (``mask_storage="threshold"``): the score computed a chunk
    of rows at a time, as every pass recomputes it, and selected as :func:`_select_by_rows` does."""
    if prune == 0:
        layer._threshold = masking.KEEP_ALL
        return
    n, k = layer.out_features, layer.in_features
    chunks = _row_chunks(n, k)
    with _without_autocast(layer.weight.device.type):
        w_rows = base_weights.row_reader(layer.weight, layer.transposed)

        def score_of(entries: slice) -> torch.Tensor:
            return layer._rows_score(w_rows, slice(entries.start // k, entries.stop // k)).reshape(-1)

        threshold = None
        if len(chunks) > 1:
            entries = [slice(rows.start * k, rows.stop * k) for rows in chunks]
            threshold = masking.threshold_by_chunks(score_of, n * k, prune, entries)
        if threshold is None:  # one chunk, or the bracket missed: selected whole
            parts = [score_of(slice(rows.start * k, rows.stop * k)) for rows in chunks]
            threshold = masking.prune_threshold(parts[0] if len(parts) == 1 else torch.cat(parts), prune)
    layer._threshold = threshold


def _select_by_rows(layer: SparseLayer, block: int, whole, prune: int, pattern) -> bool:
    """The CPU selection of a matrix too large to score whole, a chunk of rows at a time
    (:func:`pst.masking.keep_by_chunks`), packed straight into the layer's bits; ``False``
    when it does not apply (a fused or keep_zeros layer) or the bracket missed."""
    if layer.blocks > 1 or whole is not None or layer.keep_zeros:
        return False
    n, k, bits = layer.out_features, layer.in_features, layer._mask_bits
    chunks = [slice(rows.start * k, rows.stop * k) for rows in _row_chunks(n, k)]

    w_rows = base_weights.row_reader(layer.weight, layer.transposed) if layer.magnitude_score else None

    def rows_of(entries: slice) -> slice:
        return slice(entries.start // k, entries.stop // k)

    def score_of(entries: slice) -> torch.Tensor:
        out = torch.empty(entries.stop - entries.start, dtype=layer.dtype, device=bits.device)
        rows = rows_of(entries)
        layer._block_score(block, out.view(1, -1, k), span=rows, span_weight=None if w_rows is None else w_rows(rows))
        return out

    def keep_chunk(entries: slice, keep: torch.Tensor) -> None:
        pack_mask(keep, out=_bits_of_rows(bits, rows_of(entries), k))

    kept = masking.keep_by_chunks(score_of, n * k, prune, pattern, chunks, keep_chunk)
    if kept is None:
        return False
    # The kept entries' bits are still 0, and distinct within a byte: adding them sets them.
    bits.index_add_(0, kept >> 3, (1 << (kept & 7)).to(torch.uint8))
    return True


def _select(members: list, numel: int, prune: int | torch.Tensor, pattern, dtype: torch.dtype,
            device: torch.device, sync_free: bool) -> None:
    keep = bits = None
    if isinstance(prune, int) and prune == 0:  # a block left whole beside pruned blocks of the same layer
        keep = torch.ones(len(members), numel, dtype=torch.bool, device=device)
    else:
        scores = torch.empty(len(members), numel, dtype=dtype, device=device)
        for row, (layer, block, whole) in enumerate(members):
            layer._block_score(block, scores[row].view(layer.layout.repeats, -1, layer.in_features))
            if layer.keep_zeros:  # the base's zeros (``whole`` holds the support) go first
                scores[row].view(layer.layout.repeats, -1, layer.in_features).masked_fill_(
                    ~layer.layout.rows_of(whole, block), -torch.inf)
        if sync_free and kernels.enabled(scores):  # compared, tie-broken and packed by two kernels
            bits = masking.keep_bits(scores, prune, pattern)
        else:
            keep = keep_mask(scores, prune, pattern)
    for row, (layer, block, whole) in enumerate(members):
        if whole is None:  # straight into the block's own bytes
            if bits is not None:
                layer._block_bits(block).copy_(bits[row])
            else:
                pack_mask(keep[row], out=layer._block_bits(block))
            continue
        block_keep = keep[row] if bits is None else unpack_mask(bits[row], layer.bit_table, 1, numel)
        block_keep = block_keep.view(layer.layout.repeats, -1, layer.in_features)
        if layer.keep_zeros:  # ANDed with the support: an N:M group's extra zeros are no candidates, still zero
            layer.layout.rows_of(whole, block).logical_and_(block_keep)
        else:
            layer.layout.rows_of(whole, block).copy_(block_keep)


# Bytes of mask packed per pass: bounds the packing temporary (eight bytes per byte packed) for
# LLM-sized matrices; smaller ones pack in one pass.
_PACK_BYTES = 1 << 21
# Multiplying eight 0/1 bytes, read as one little-endian int64, by this gathers them into its top
# byte: byte i (entry 8 j + i) lands on bit 56 + i, and no two partial products overlap, so
# nothing carries. One multiply and one shift per eight entries, where shifting each entry and
# summing took ten times as long on a CPU.
_GATHER_BITS = sum(1 << (56 - 7 * i) for i in range(8))


def pack_mask(keep: torch.Tensor, out: torch.Tensor) -> None:
    """A bool mask (any shape, row-major) into ``out``, one bit per entry (bit i of byte j: entry 8 j + i)."""
    flat = keep.reshape(-1)
    if flat.numel() % 8:  # pad the last byte with kept entries
        flat = torch.cat([flat, flat.new_ones(8 - flat.numel() % 8)])
    elif flat.storage_offset() % 8:  # eight entries read as one int64 must be aligned to it
        flat = flat.clone()
    words = flat.view(torch.int64)
    for start in range(0, words.numel(), _PACK_BYTES):
        part = words[start : start + _PACK_BYTES]
        torch.bitwise_right_shift(part.mul(_GATHER_BITS), 56, out=out[start : start + part.numel()])


def bit_table(dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """(256, 8): the 0/1 entries a byte of :func:`pack_mask` holds, in ``dtype``."""
    return ((torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1).to(dtype)


def unpack_mask(bits: torch.Tensor, table: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """The (rows, columns) mask of :func:`pack_mask` as 0/1 in the dtype of ``table`` (:func:`bit_table`).

    One lookup per byte, straight into the dtype of the products the mask enters: on a CPU a
    float times a uint8 mask first copies the mask to float, 3 to 4 times the time of the product.
    """
    unpacked = torch.index_select(table, 0, bits.int())
    return unpacked.view(-1)[: rows * columns].view(rows, columns)


def _row_chunks(n: int, k: int) -> list[slice]:
    """The row chunks of an (n, k) matrix the reference path works in (:data:`_ROW_CHUNK_ENTRIES`),
    a multiple of 8 rows each so that every chunk's mask starts on a byte of the packed bits."""
    rows = max(8, _ROW_CHUNK_ENTRIES // k // 8 * 8)
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _rows(tensor: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return None if tensor is None else tensor[rows]


def _bits_of_rows(bits: torch.Tensor | None, rows: slice, k: int) -> torch.Tensor | None:
    """The packed mask of rows ``rows`` of an (n, k) mask (``rows.start`` a multiple of 8)."""
    return None if bits is None else bits[rows.start * k // 8 : -(-rows.stop * k // 8)]


def _reference_forward(spec: LayerSpec, x, w_rows, bias, U, V, A, B, R, C, scores, bits, threshold, table, one_hot,
                       dtype: torch.dtype) -> torch.Tensor:
    """y = x (M * W')^T + b without the fused kernels, M * W' built a chunk of rows at a time for a
    large matrix (:func:`_row_chunks`), each chunk's outputs written in place; ``w_rows(rows)``
    reads W's rows (``pst.base_weights.row_reader``)."""
    n, k = spec.out_features, spec.in_features
    chunks = _row_chunks(n, k)
    score_terms = (A, B, R, C, scores)
    if len(chunks) == 1:
        effective = _effective_rows(spec, chunks[0], w_rows, U, V, score_terms, bits, threshold, table, one_hot, dtype)
        return nn.functional.linear(x, effective, bias)
    y = x.new_empty(*x.shape[:-1], n)
    x2d, y2d = x.reshape(-1, k), y.view(-1, n)
    for rows in chunks:
        effective = _effective_rows(spec, rows, w_rows, U, V, score_terms, bits, threshold, table, one_hot, dtype)
        part_bias = None if bias is None else bias[rows]
        if torch.compiler.is_compiling():  # dynamo takes no out= into a strided view
            y2d[:, rows] = nn.functional.linear(x2d, effective, part_bias)
        elif part_bias is None:
            torch.mm(x2d, effective.t(), out=y2d[:, rows])
        else:
            torch.addmm(part_bias, x2d, effective.t(), out=y2d[:, rows])
        del effective
    return y


def _effective_rows(spec: LayerSpec, rows: slice, w_rows, U, V, score_terms: tuple, bits, threshold, table, one_hot,
                    dtype: torch.dtype) -> torch.Tensor:
    """Rows ``rows`` of M * W' in ``dtype``, by the torch reference."""
    k = spec.in_features
    A, B, R, C, scores = score_terms
    updated = updated_weight(spec, w_rows(rows), _rows(U, rows), V, _rows(one_hot, rows))
    mask = _reference_mask(spec, updated, _rows(A, rows), B, _rows(R, rows), C, _rows(scores, rows),
                           _bits_of_rows(bits, rows, k), _threshold_of_rows(threshold, rows, k), table)
    return _masked(updated, mask, dtype, reuse=U is not None)


def _reference_mask(spec: LayerSpec, updated: torch.Tensor, A, B, R, C, scores, bits, threshold, table):
    """M of the rows ``updated`` (W') holds, as 0/1 in W's dtype, or ``None`` where nothing is
    pruned: unpacked from the layer's bits, or recomputed from the score and the threshold."""
    if threshold is not None:
        if threshold.keeps_all:
            return None
        return threshold.mask_(_score_rows(spec, updated, A, B, R, C, scores))
    return None if bits is None else unpack_mask(bits, table, *updated.shape)


def _fused(weight: torch.Tensor, threshold) -> bool:
    """Whether a layer's passes run the fused kernels (``pst.kernels``), decided before W is dequantized."""
    return threshold is None and kernels.enabled_for(base_weights.float_dtype(weight), weight.device)


def _threshold_of_rows(threshold: masking.Threshold | None, rows: slice, k: int) -> masking.Threshold | None:
    return None if threshold is None else threshold.after(rows.start * k)


def _without_autocast(device_type: str):
    """Autocast off, for products that must stay in the parameters' precision."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _spread(per_row: torch.Tensor, one_hot: torch.Tensor | None) -> torch.Tensor:
    """A fused layer's per-row factor (n, r) spread over its blocks' columns (n, blocks r), zero
    off each row's block, so that W' = W + beta spread(U) V.view(-1, k) is one product."""
    if one_hot is None:
        return per_row
    return (per_row.unsqueeze(1) * one_hot.to(per_row.dtype).unsqueeze(2)).flatten(1)


def _fold(spread: torch.Tensor, one_hot: torch.Tensor | None) -> torch.Tensor:
    """Gradient of a spread factor (n, blocks r) back to its per-row parameter (n, r)."""
    if one_hot is None:
        return spread
    per_block = spread.view(spread.shape[0], one_hot.shape[1], -1)
    return (per_block * one_hot.to(spread.dtype).unsqueeze(2)).sum(1)


def _scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * tensor``, without an elementwise pass when the factor is 1 (the paper's default)."""
    return tensor if factor == 1 else tensor * factor


def _add_score_terms(spec: LayerSpec, out: torch.Tensor, A, B, R, C, filled: bool) -> bool:
    """The data-driven terms alpha1 A B + alpha2 (R 1^T + 1 C^T) added to ``out`` (repeats, rows,
    k), or written there when not ``filled``, as one product of [alpha1 A | alpha2 R | alpha2] and
    [B; 1; C^T]: one pass over S where there were three. A: (repeats, rows, r), B: (r, k),
    R: (repeats, rows, 1), C: (k,), each ``None`` when its term is off. Whether ``out`` is filled."""
    k = out.shape[-1]
    left, right = [], []
    if A is not None:
        left.append(_scaled(A, spec.alpha1))
        right.append(B)
    if R is not None:
        per_column = C.view(1, k)
        left += [_scaled(R, spec.alpha2), torch.full_like(R, spec.alpha2)]
        right += [torch.ones_like(per_column), per_column]
    if not left:
        return filled
    a, b = torch.cat(left, -1), torch.cat(right).expand(out.shape[0], -1, -1)
    out.baddbmm_(a, b) if filled else torch.baddbmm(out, a, b, beta=0, out=out)
    return True


def _score_rows(spec: LayerSpec, updated: torch.Tensor, A, B, R, C, scores) -> torch.Tensor:
    """S of the rows that ``updated`` (W'), A, R and ``scores`` hold, for an unfused layer, in a new
    row-major tensor: how a threshold-kept mask (``mask_storage="threshold"``) is selected and
    recomputed in every pass, by the same ops on the same rows, so that it comes out the same."""
    if scores is not None and not (spec.magnitude_score or A is not None or R is not None):
        return scores.clone(memory_format=torch.contiguous_format)  # movement pruning's: S itself
    score = torch.empty(updated.shape, dtype=updated.dtype, device=updated.device)  # row-major, as selected
    if spec.magnitude_score:
        torch.abs(updated, out=score)
    _add_score_terms(spec, score.unsqueeze(0), None if A is None else A.unsqueeze(0), B,
                     None if R is None else R.view(1, -1, 1), C, filled=spec.magnitude_score)
    return score if scores is None else score.add_(scores)


def _output_by_input(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """W as (n, k): a view of a plain weight, or a quantized one dequantized for this layer only."""
    weight = base_weights.dequantized(weight)
    return weight.t() if transposed else weight


def updated_weight(spec: LayerSpec, w: torch.Tensor, U, V, one_hot) -> torch.Tensor:
    """W' = W + beta U V as (n, k) in the parameters' dtype, from W as (n, k); W itself without an update."""
    if U is None:
        return w
    return torch.addmm(w, _spread(U, one_hot), V.view(-1, spec.in_features), alpha=spec.beta)


def _fused_effective(spec: LayerSpec, w: torch.Tensor, U, V, bits, block_of_row, dtype: torch.dtype) -> torch.Tensor:
    """M * W' in ``dtype`` by one kernel (``pst.kernels``)."""
    return kernels.masked_update(w, _factor(U), None if V is None else V.view(-1, spec.in_features), block_of_row,
                                 bits, spec.beta, dtype)


def _factor(U: torch.Tensor | None) -> torch.Tensor | None:
    return None if U is None else U.contiguous()


def _masked(updated: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype, reuse: bool = False) -> torch.Tensor:
    """M * W' in ``dtype``, in one pass (the product is written straight in the compute dtype);
    ``reuse``: W' may be overwritten."""
    if mask is None:
        return updated.to(dtype)
    if reuse and updated.dtype == dtype:
        return updated.mul_(mask)
    return torch.mul(updated, mask, out=torch.empty(updated.shape, dtype=dtype, device=updated.device))


class SparseLinearFunction(torch.autograd.Function):
    """y = x (M * W')^T + b with the straight-through estimator, recomputing in backward.

    Reads only its arguments (no layer, no Python state): ``torch.compile`` traces it whole.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, U, V, A, B, R, C, scores, bits, threshold, table, one_hot, block_of_row,
                spec: LayerSpec, dtype):
        with _without_autocast(x.device.type):
            x = x.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            if _fused(weight, threshold):
                w = _output_by_input(weight, spec.transposed)
                y = nn.functional.linear(x, _fused_effective(spec, w, U, V, bits, block_of_row, dtype), bias)
            else:
                y = _reference_forward(spec, x, base_weights.row_reader(weight, spec.transposed), bias, U, V, A, B, R,
                                       C, scores, bits, threshold, table, one_hot, dtype)
        ctx.spec, ctx.threshold = spec, threshold
        ctx.save_for_backward(x, weight, U, V, A, B, R, C, scores, bits, table, one_hot, block_of_row)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, U, V, A, B, R, C, scores, bits, table, one_hot, block_of_row = ctx.saved_tensors
        with _without_autocast(grad_y.device.type):
            grads = _backward(ctx.spec, ctx.needs_input_grad, grad_y.to(x.dtype), x, weight, U, V, A, B, R, C,
                              scores, bits, ctx.threshold, table, one_hot, block_of_row)
        return (*grads, None, None, None, None, None, None, None)


def _backward(spec: LayerSpec, needs, grad_y, x, weight, U, V, A, B, R, C, scores, bits, threshold, table, one_hot,
              block_of_row):
    """The gradients, each in its input's dtype (see :func:`_gradients`)."""
    n, k = spec.out_features, spec.in_features
    grad_y = grad_y.reshape(-1, n)
    fused = _fused(weight, threshold)
    chunks = [slice(0, n)] if fused else _row_chunks(n, k)
    if len(chunks) == 1:
        w = _output_by_input(weight, spec.transposed)
        grads = _gradients(spec, needs, grad_y, x, w, U, V, A, B, R, C, scores, bits, threshold, table, one_hot,
                           block_of_row, fused)
    else:
        w_rows = base_weights.row_reader(weight, spec.transposed)
        grads = _chunked_gradients(spec, needs, grad_y, x, weight, w_rows, U, V, A, B, R, C, scores, bits, threshold,
                                   table, one_hot, chunks)
    grad_x = None if grads[0] is None else grads[0].view(x.shape)
    return _in_dtypes((grad_x, *grads[1:]), x, weight, U, V, A, B, R, C, scores)


# Gradients every row chunk adds to (x, V, B, C); the others are stacked by rows.
_SUMMED_OVER_ROWS = (0, 4, 6, 8)


def _chunked_gradients(spec: LayerSpec, needs, grad_y, x, weight, w_rows, U, V, A, B, R, C, scores, bits, threshold,
                       table, one_hot, chunks: list[slice]) -> list:
    """:func:`_gradients` a chunk of rows at a time (the reference path for a large matrix, see
    :func:`_row_chunks`), into gradients allocated before any chunk's temporaries: one allocated
    among them would outlive them and pin their memory in the heap."""
    k = spec.in_features
    x = x.reshape(-1, k)
    likes = (None, weight, grad_y[0], U, V, A, B, R, C, scores)
    grads = [_gradient_buffer(i, like) if need and like is not None else None
             for i, (need, like) in enumerate(zip(needs, likes))]
    if needs[0]:  # dL/dx, which the chunks' products add to in x's dtype
        grads[0] = x.new_zeros(x.shape)
    for rows in chunks:
        part = _gradients(replace(spec, out_features=rows.stop - rows.start), needs, grad_y[:, rows], x, w_rows(rows),
                          _rows(U, rows), V, _rows(A, rows), B, _rows(R, rows), C, _rows(scores, rows),
                          _bits_of_rows(bits, rows, k), _threshold_of_rows(threshold, rows, k), table,
                          _rows(one_hot, rows), None, fused=False, grad_x=grads[0])
        for i, grad in enumerate(part):
            if grad is None or i == 0:  # dL/dx is accumulated in place
                continue
            if i in _SUMMED_OVER_ROWS:
                grads[i].add_(grad)
            else:  # a Conv1D's weight gradient is input x output: its rows are columns
                (grads[i][:, rows] if i == 1 and spec.transposed else grads[i][rows]).copy_(grad)
    return grads


def _gradient_buffer(index: int, like: torch.Tensor) -> torch.Tensor:
    """Where the chunks' gradient of input ``index`` goes: stacked rows, or a zero sum (V, B and C,
    in at least fp32, as one product over all rows would sum them)."""
    if index not in _SUMMED_OVER_ROWS:
        return torch.empty_like(like)
    return torch.zeros_like(like, dtype=torch.promote_types(like.dtype, torch.float32))


def _gradients(spec: LayerSpec, needs, grad_y, x, w, U, V, A, B, R, C, scores, bits, threshold, table, one_hot,
               block_of_row, fused: bool, grad_x: torch.Tensor | None = None) -> tuple:
    """The gradients from grad_y (tokens, n) and W as (n, k), dL/dx as (tokens, k), added to
    ``grad_x`` when given, by the fused kernels or the torch reference (``fused``, :func:`_fused`); at most two n x k temporaries besides the unpacked mask: in the
    reference, W' becomes dL/dS and then dL/dW' in place (when W' is not the weight itself);
    with the fused kernels, dL/dW' is written over dL/d(M * W')."""
    n, k = spec.out_features, spec.in_features
    grad_weight = grad_bias = grad_U = grad_V = grad_A = grad_B = grad_R = grad_C = grad_scores = None

    score_needs = any(needs[i] for i in (5, 6, 7, 8, 9))
    weight_needs = needs[1] or needs[3] or needs[4]
    updated = None if fused else updated_weight(spec, w, U, V, one_hot)
    # The reference's mask, made once for both its uses (M * W' and M * G), in W's dtype.
    mask = None
    if not fused and (needs[0] or weight_needs):
        mask = _reference_mask(spec, updated, A, B, R, C, scores, bits, threshold, table)
    if needs[0]:
        effective = (_fused_effective(spec, w, U, V, bits, block_of_row, x.dtype) if fused
                     else _masked(updated, mask, x.dtype))
        grad_x = grad_y @ effective if grad_x is None else grad_x.addmm_(grad_y, effective)
        del effective
    if needs[2]:
        grad_bias = grad_y.sum(0)
    if not (score_needs or weight_needs):
        return grad_x, None, grad_bias, None, None, None, None, None, None, None
    # dL/d(M * W'), the dense gradient every method needs: the third matrix product of a layer.
    grad_effective = grad_y.t() @ x.reshape(-1, k)
    # Straight-through: dL/dS = dL/dM = dL/d(M * W') * W' (in at least the parameters' precision).
    grad_updated = None
    if fused:  # both at once, dL/dW' written over G
        grad_score, grad_updated = _fused_straight_through(spec, score_needs, weight_needs, grad_effective, w, U, V,
                                                           bits, block_of_row)
        grad_effective = None
    else:  # dL/dS in place of W'; dL/dW' (in place of dL/dS or G) once the score's gradients are taken
        grad_score = _score_gradient(spec, score_needs, grad_effective, updated, U is not None)
    del updated
    if score_needs:
        grad_A, grad_B, grad_R, grad_C = _score_factor_gradients(spec, needs, grad_score, A, B, C, one_hot,
                                                                  merged=not fused)
        if needs[9]:
            grad_scores = grad_score
    if weight_needs:
        if grad_updated is None:
            grad_updated = _updated_gradient(spec, needs[9], grad_score, grad_effective, mask)
        del grad_effective, grad_score, mask
        if needs[1]:
            grad_weight = grad_updated.t() if spec.transposed else grad_updated
        # Rank-r products cast the small factor to the n x k gradient's dtype, never the other
        # way round, and give gradients laid out like their parameters (no copy by autograd).
        dtype = grad_updated.dtype
        if needs[3]:
            grad_U = _fold(_scaled(grad_updated @ V.view(-1, k).t().to(dtype), spec.beta), one_hot)
        if needs[4]:
            grad_V = _scaled(_spread(U, one_hot).t().to(dtype) @ grad_updated, spec.beta).view(V.shape)
    return grad_x, grad_weight, grad_bias, grad_U, grad_V, grad_A, grad_B, grad_R, grad_C, grad_scores


def _score_factor_gradients(spec: LayerSpec, needs, grad_score, A, B, C, one_hot, merged: bool) -> tuple:
    """The gradients of A, B, R and C from dL/dS (n, k), by products that each read dL/dS once:
    with [B^T | 1] for A's and R's (a row sum), with [spread(A) | a column per block] for B's and
    C's (column sums per block). ``merged`` False (the fused path) sums R's and an unfused C's
    apart: on a GPU the ones to concatenate would be more launches, and a launch costs more there
    than a read of dL/dS."""
    k, dtype = grad_score.shape[1], grad_score.dtype
    grad_A = grad_B = grad_R = grad_C = None
    right = [B.view(-1, k).t().to(dtype)] if needs[5] else []
    if needs[7] and merged:
        right.append(grad_score.new_ones(k, 1))
    by_row = grad_score @ _joined(right) if right else None
    if needs[5]:
        grad_A = _fold(_scaled(by_row[:, : B.numel() // k], spec.alpha1), one_hot)
    if needs[7]:
        grad_R = _scaled(by_row[:, -1] if merged else grad_score.sum(1), spec.alpha2)
    c_by_product = needs[8] and (merged or one_hot is not None)
    left = [_spread(A, one_hot).to(dtype)] if needs[6] else []
    if c_by_product:
        left.append(grad_score.new_ones(grad_score.shape[0], 1) if one_hot is None else one_hot.to(dtype))
    by_column = _joined(left).t() @ grad_score if left else None
    if needs[6]:
        grad_B = _scaled(by_column[: B.numel() // k], spec.alpha1).view(B.shape)
    if needs[8]:
        per_column = by_column[-(C.numel() // k) :] if c_by_product else grad_score.sum(0)
        grad_C = _scaled(per_column, spec.alpha2).view(C.shape)
    return grad_A, grad_B, grad_R, grad_C


def _joined(factors: list[torch.Tensor]) -> torch.Tensor:
    return factors[0] if len(factors) == 1 else torch.cat(factors, 1)


def _score_gradient(spec: LayerSpec, score_needs: bool, grad_effective, updated, reusable: bool):
    """dL/dS = G * W' (G = dL/d(M * W')), written over W' when ``reusable`` and no precision is lost."""
    if not (score_needs or spec.magnitude_score_grad):
        return None
    if reusable and torch.promote_types(updated.dtype, grad_effective.dtype) == updated.dtype:
        return updated.mul_(grad_effective)
    return grad_effective * updated


def _updated_gradient(spec: LayerSpec, score_grad: bool, grad_score, grad_effective, mask):
    """dL/dW' from G and dL/dS, written over dL/dS (over G without the |W'| term) unless dL/dS is
    itself a returned gradient (``score_grad``: movement's scores)."""
    if not spec.magnitude_score_grad:
        return grad_effective.mul_(mask) if mask is not None else grad_effective
    # dL/dW' = M * G + sign(W') * dL/dS, and sign(W') dL/dS = copysign(dL/dS, G).
    grad_updated = torch.copysign(grad_score, grad_effective) if score_grad else grad_score.copysign_(grad_effective)
    if mask is not None:
        return grad_updated.addcmul_(grad_effective, mask)
    return grad_updated.add_(grad_effective)


def _fused_straight_through(spec: LayerSpec, score_needs: bool, weight_needs: bool, grad_effective, w, U, V, bits,
                            block_of_row):
    """(dL/dS, dL/dW') as :func:`_score_gradient` and :func:`_updated_gradient`, by one kernel
    reading G in its own dtype: dL/dW' is written over G, or into a new tensor when W's precision
    is higher (autocast), where a conversion of G would be one more pass."""
    dtype = torch.promote_types(w.dtype, grad_effective.dtype)
    separate = weight_needs and grad_effective.dtype != dtype
    grad_updated = torch.empty_like(grad_effective, dtype=dtype) if separate else grad_effective
    grad_score = torch.empty_like(grad_effective, dtype=dtype) if score_needs else grad_effective.new_empty(0)
    kernels.straight_through(grad_effective, grad_updated if separate else None, grad_score, w, _factor(U),
                             None if V is None else V.view(-1, spec.in_features), block_of_row, bits, spec.beta,
                             weight_needs, score_needs, spec.magnitude_score_grad)
    return (grad_score if score_needs else None), (grad_updated if weight_needs else None)


def _in_dtypes(grads: tuple, x, weight, U, V, A, B, R, C, scores) -> tuple:
    """Every gradient in its input's dtype (the bias has the weight's)."""
    params = (x, weight, weight, U, V, A, B, R, C, scores)
    return tuple(g if g is None else g.to(p.dtype) for g, p in zip(grads, params))
