"""What decides a step's time on a GPU, counted exactly on any device: kernel launches and bytes.

A ``TorchDispatchMode`` sees every aten op a step runs (forward, backward, optimizer, the
mask refresh). Views and allocations launch no kernel; everything else does (on CUDA, one or
a few kernels per op). Bytes are what an op reads and writes at least: its tensor inputs
and outputs, each counted once. Host synchronisations are the ops that read a device value
back (``.item()``, ``nonzero``, boolean indexing). torch has no such counter, hence this module.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that only make a new view or new (uninitialised) storage: no kernel, no traffic.
_FREE = {
    "view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "unsqueeze", "squeeze", "slice",
    "select", "as_strided", "alias", "detach", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "_reshape_alias", "split", "split_with_sizes", "chunk", "unbind", "diagonal",
    "view_as", "expand_as", "unflatten", "flatten", "lift_fresh", "_local_scalar_dense_free",
}
# Ops that make the host wait for the device.
SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "item", "_assert_async_msg", "equal", "is_nonzero"}


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


class OpCounter(TorchDispatchMode):
    """Counts launching ops (by name), host syncs and bytes moved while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.bytes: Counter = Counter()
        self.sequence: list[tuple] = []  # (op, input shapes), to compare two steps

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name not in _FREE:
            inputs, _ = tree_flatten((args, kwargs))
            outputs, _ = tree_flatten(out)
            self.ops[name] += 1
            self.bytes[name] += _bytes(inputs + outputs)
            self.sequence.append((name, tuple(tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor))))
        return out

    @property
    def launches(self) -> int:
        return sum(self.ops.values())

    @property
    def syncs(self) -> int:
        return sum(count for name, count in self.ops.items() if name in SYNCS)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())
