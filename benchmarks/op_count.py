"""What decides a step's time on a GPU, counted exactly on any device: kernel launches and bytes.

A ``TorchDispatchMode`` sees every aten op a step runs (forward, backward, optimizer, the
mask refresh). Views and allocations launch no kernel; every other op does (on CUDA, one or
a few kernels each). Bytes are what an op must at least read and write: its tensor inputs
and outputs, each counted once. An op is PST's own when it runs from code in the ``pst``
package (the layer, its backward, the mask refresh) and is not one of the three products
every dense layer makes (forward, input gradient, weight gradient: contracted dimension
above ``DENSE_INNER``). Host synchronisations are the ops that read a device value back.
torch has no such counter (its profiler times kernels but does not tell whose they are), hence this module.
"""
from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that only make a view or uninitialised storage: no kernel, no traffic.
FREE = {
    "view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "unsqueeze", "squeeze", "slice",
    "select", "as_strided", "alias", "detach", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "_reshape_alias", "split", "split_with_sizes", "chunk", "unbind", "diagonal",
    "view_as", "expand_as", "unflatten", "flatten", "lift_fresh", "_record_function_enter_new",
    "_record_function_exit", "promote_types",  # the last computes a dtype on the host
}
# Reading a value back: a device-to-host synchronisation for a tensor on an accelerator. AdamW's
# step counters are CPU tensors even on CUDA (no sync), so only reads from pst code are counted.
SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "item", "is_nonzero", "equal"}
PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul"}
DENSE_INNER = 64  # a product contracting more than this is a dense layer's; rank-r ones contract r
_PST_DIR = os.path.join(os.sep, "pst", "")
_REPRO_DIR = os.path.join(os.sep, "pst", "repro", "")


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def _from_pst() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if _PST_DIR in name and _REPRO_DIR not in name:
            return True
        frame = frame.f_back
    return False


def _is_dense_product(name: str, args) -> bool:
    if name not in PRODUCTS:
        return False
    matrices = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
    return len(matrices) >= 2 and matrices[-1].shape[-2] > DENSE_INNER


class OpCounter(TorchDispatchMode):
    """Counts launching ops by name, PST's own ops and bytes, and syncs in pst code, while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.pst_ops: Counter = Counter()
        self.pst_bytes = 0
        self.total_bytes = 0
        self.pst_syncs = 0
        # Every launching op with what a CUDA graph would bake into it: input shapes and dtypes, and
        # every argument that is not a tensor. Two steps a graph can replay have equal sequences.
        self.sequence: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in FREE:
            return out
        ours = _from_pst()
        if name in SYNCS:
            self.pst_syncs += ours
            return out
        inputs, _ = tree_flatten((args, kwargs))
        outputs, _ = tree_flatten(out)
        moved = _bytes(inputs + outputs)
        self.ops[name] += 1
        self.total_bytes += moved
        if ours and not _is_dense_product(name, args):
            self.pst_ops[name] += 1
            self.pst_bytes += moved
        self.sequence.append((name, tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t
                                          for t in inputs)))
        return out

    @property
    def launches(self) -> int:
        return sum(self.ops.values())
