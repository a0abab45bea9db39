"""The sparsity schedule held on the device, for training steps captured in CUDA graphs.

A CUDA graph replays the kernels it recorded with the arguments they had, so nothing the
host computes per step can reach a replayed step: not the sparsity, not the pruned count,
not a ``topk`` whose k follows them. Here the step counter lives on the device, and the
pruned count of every block size at every step is tabulated there once, from the same
Python schedule and the same rounding (``pst.masking.num_pruned``) as the eager path. A
step advances the counter in place and gathers the counts into a fixed buffer, which the
``"sort"`` selection reads (``pst.masking``): the same kernels, shapes and arguments at
every step, warm-up, ramp and cool-down alike. No package offers a device-side sparsity
schedule, hence this module.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .masking import num_pruned


class DevicePrunes:
    """Pruned counts per block size, indexed by a step counter on each device that holds layers.

    ``sparsity_at(step)`` is the schedule; steps past ``total_steps`` keep its last value. The
    table costs 8 bytes per block size per step of the schedule (a 100,000-step run of a model
    with two matrix sizes: 1.6 MB).
    """

    def __init__(self, sparsity_at: Callable[[int], float], total_steps: int, numels: Iterable[int],
                 devices: Iterable[torch.device], step: int = 0) -> None:
        self.total_steps = total_steps
        sizes = sorted(set(numels))
        self._rows = {numel: row for row, numel in enumerate(sizes)}
        sparsities = [sparsity_at(t) for t in range(total_steps + 1)]
        table = torch.tensor([[num_pruned(p, numel) for p in sparsities] for numel in sizes], dtype=torch.int64)
        table = table.reshape(len(sizes), total_steps + 1)
        self._tables = {device: table.to(device) for device in set(devices)}
        self._steps = {device: torch.zeros((), dtype=torch.int64, device=device) for device in self._tables}
        self._counts = {device: torch.empty(len(sizes), 1, dtype=torch.int64, device=device) for device in self._tables}
        self.set_step(step)

    def count(self, numel: int, device: torch.device) -> torch.Tensor:
        """The current pruned count of a block of ``numel`` entries: a 0-d view of a fixed buffer."""
        if device not in self._counts or numel not in self._rows:
            raise KeyError(f"no pruned count for blocks of {numel} entries on {device}: the schedule was built "
                           f"for {sorted(self._rows)} on {sorted(map(str, self._counts))}")
        return self._counts[device][self._rows[numel], 0]

    def advance(self) -> None:
        """One step forward, on the device (what a captured step replays)."""
        for device, step in self._steps.items():
            step.add_(1)
            self._gather(device)

    def set_step(self, step: int) -> None:
        """Jump to ``step`` (resuming, or a Trainer's global step): a host value, so not for a captured step."""
        for device, counter in self._steps.items():
            counter.fill_(step)
            self._gather(device)

    def _gather(self, device: torch.device) -> None:
        position = self._steps[device].clamp(max=self.total_steps).reshape(1)
        torch.index_select(self._tables[device], 1, position, out=self._counts[device])
