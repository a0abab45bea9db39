"""PST on wrapped and sharded models: the model inside its wrappers, and its full weights.

Two things hide a sparsified model from the functions that read it:

- wrappers (``DistributedDataParallel``, ``DataParallel``, FSDP1's ``FullyShardedDataParallel``,
  DeepSpeed, ``torch.compile``) hold it in ``.module`` and hide its attributes, the ``PSTConfig``
  among them: :func:`unwrap` finds it;
- sharding (FSDP2's ``fully_shard`` turns parameters into ``DTensor`` shards in place; FSDP1
  keeps each rank's slice of a flat parameter) leaves no rank with whole weights outside the
  forward pass: :func:`gathered` all-gathers them for the time of a ``with`` block. It is a
  collective: every rank must enter it, in the same order.

FSDP1 also puts ``_fsdp_wrapped_module.`` (and activation checkpointing
``_checkpoint_wrapped_module.``) into module names; :func:`clean_name` drops them, so names
match the unwrapped model's state dict and files saved from one process.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

try:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch build without distributed support: nothing can be sharded
    dist = FSDPModule = FSDP1 = DTensor = None

#: Wrappers that hold the model in ``.module``.
_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel) + ((FSDP1,) if FSDP1 is not None else ())
#: Name parts that wrappers insert between a model's own module names.
_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")

# Models whose parameters are gathered right now (inside ``gathered``), by id of the unwrapped model.
_gathered: set[int] = set()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / FSDP1 / DeepSpeed / ``torch.compile`` wrappers
    (the model itself when unwrapped). FSDP2 wraps nothing: its model is returned as is.

    What accelerate's ``extract_model_from_parallel`` does, written out because accelerate is
    not a dependency of the library (``pip install pst``).
    """
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, _WRAPPERS) or type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        else:
            return model


def clean_name(name: str) -> str:
    """A parameter or module name without the parts wrappers insert (``_fsdp_wrapped_module.``)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def sharding(model: nn.Module) -> str | None:
    """``"fsdp2"``, ``"fsdp1"`` or ``None``: how the parameters of ``model`` are sharded right now
    (``None`` inside :func:`gathered`)."""
    if dist is None or id(unwrap(model)) in _gathered:
        return None
    modules = list(model.modules())
    if any(isinstance(m, FSDP1) for m in modules):
        return "fsdp1"
    if any(isinstance(m, FSDPModule) for m in modules) or any(isinstance(p, DTensor) for p in model.parameters()):
        return "fsdp2"
    return None


def is_sharded(model: nn.Module) -> bool:
    return sharding(model) is not None


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return dist is None or not dist.is_initialized() or dist.get_rank() == 0


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """The unwrapped model with whole parameters on every rank for the time of the block.

    A no-op for unsharded models. For FSDP2 each ``fully_shard`` unit is unsharded (and
    resharded after); for FSDP1 the full parameters are summoned (``use_orig_params=True``:
    the parameters keep their identity). Changes made inside are discarded. Collective:
    every rank must enter, or the others wait forever. Memory: the whole model on each rank
    while the block runs.
    """
    kind = sharding(model)
    inner = unwrap(model)
    if kind is None:
        yield inner
        return
    if kind == "fsdp1":
        _check_fsdp1_root(model)
        context = FSDP1.summon_full_params(model, writeback=False)
    else:
        context = _unsharded_fsdp2(model)
    with context:
        _gathered.add(id(inner))
        try:
            yield inner
        finally:
            _gathered.discard(id(inner))


@contextlib.contextmanager
def _unsharded_fsdp2(model: nn.Module) -> Iterator[None]:
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:  # DTensors without fully_shard (tensor parallelism): nothing of ours gathers them
        raise ValueError(
            "this model holds DTensor parameters but no fully_shard unit; pst gathers FSDP shards only: "
            "gather a full state dict (torch.distributed.checkpoint.state_dict.get_model_state_dict with "
            "StateDictOptions(full_state_dict=True)) and load it into an unsharded copy"
        )
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def _check_fsdp1_root(model: nn.Module) -> None:
    """FSDP1's root unit keeps the parameters no inner unit holds; given the module inside it,
    they could not be gathered."""
    units = [m for m in model.modules() if isinstance(m, FSDP1)]
    if units and not isinstance(model, FSDP1) and all(getattr(u, "_is_root", None) is False for u in units):
        raise ValueError(
            "this module lies inside a FullyShardedDataParallel root: pass the object FSDP(...) returned "
            "(the root), whose parameters pst must gather too"
        )


def refuse_wrapped(model: nn.Module, what: str, fix: str) -> None:
    """Raise if ``model`` is wrapped or sharded where ``what`` needs the bare model."""
    if unwrap(model) is not model or is_sharded(model):
        raise ValueError(f"{what} needs the bare model, and this one is wrapped ({type(model).__name__}) "
                         f"or sharded: {fix}")


__all__ = ["clean_name", "gathered", "is_main_process", "is_sharded", "refuse_wrapped", "sharding", "unwrap"]
