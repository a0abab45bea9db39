"""Put a method on a Hugging Face model in place, peft-style, and ask it what trains."""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from . import base_weights
from .config import PSTConfig
from .fused import BlockLayout
from .layers import SUPPORTED_MODULES, SparseLayer, link_peers, oriented_shape, refresh_step_states

logger = logging.getLogger(__name__)

CONFIG_ATTRIBUTE = "pst_config"
#: The ``requires_grad`` flag of every parameter before ``sparsify`` froze some, for ``merge``.
TRAINABLE_BEFORE_ATTRIBUTE = "_pst_trainable_before"


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseLayer]]:
    """(name, layer) for every sparse layer of the model."""
    for name, module in model.named_modules():
        if isinstance(module, SparseLayer):
            yield name, module


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` where the submodule ``name`` is (``sparsify`` and ``merge`` swap layers so)."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, module)


def matches_target(name: str, target_modules: list[str] | str) -> bool:
    """A name matches a regex fully, or ends with one of the listed suffixes (as in peft)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == suffix or name.endswith("." + suffix) for suffix in target_modules)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def block_layout(name: str, rows: int, fused_modules: dict, model_config=None) -> BlockLayout:
    """How the ``rows`` output rows of the module ``name`` split into the matrices it fuses.

    ``fused_modules`` maps name suffixes to specs (``PSTConfig.fused_modules``); names in a spec
    are read from ``model_config``. A module no suffix matches is one block.
    """
    spec = next((spec for suffix, spec in fused_modules.items() if matches_target(name, [suffix])), 1)
    return BlockLayout.from_spec(spec, rows, model_config)


def find_targets(model: nn.Module, config: PSTConfig) -> list[str]:
    """Names of the modules the (resolved) config sparsifies; errors name what went wrong."""
    resolved = config.resolved_for(_model_type(model))
    names = [name for name, _ in model.named_modules() if name and matches_target(name, resolved.target_modules)]
    if not names:
        sample = [name for name, m in model.named_modules() if isinstance(m, SUPPORTED_MODULES)][:8]
        raise ValueError(
            f"target_modules={resolved.target_modules!r} matches no module of this "
            f"{type(model).__name__}; some Linear/Conv1D names: {sample}"
        )
    modules = dict(model.named_modules())
    unsupported = [f"{name} ({type(modules[name]).__name__})" for name in names if not isinstance(modules[name], SUPPORTED_MODULES)]
    if unsupported:
        raise TypeError(
            f"target_modules matched unsupported module(s) {unsupported[:5]}; only nn.Linear and "
            "transformers Conv1D can be sparsified: narrow target_modules"
        )
    for name in names:  # quantized bases the layer cannot read, before any module is replaced
        try:
            base_weights.check_base(modules[name], resolved.spec.trains_pretrained)
        except TypeError as error:
            raise TypeError(f"cannot sparsify {name}: {error}") from None
    return names


def sparsify(model: nn.Module, config: PSTConfig | None = None) -> nn.Module:
    """Wrap the targeted modules of ``model`` in place and freeze what the method freezes.

    - ``pst`` and ``lora``: every pre-trained parameter is frozen; the layers' new
      parameters train, and so does the task head when ``config.train_head``.
    - ``magnitude``, ``movement``, ``dense``: every parameter trains (full fine-tuning);
      ``dense`` wraps nothing.
    Returns the same model, which remembers its config (``model.pst_config``).
    """
    config = config or PSTConfig()
    config.validate()
    if getattr(model, CONFIG_ATTRIBUTE, None) is not None or any(True for _ in sparse_layers(model)):
        raise ValueError("this model is already sparsified; sparsify() applies once (use pst.merge() first)")
    resolved = config.resolved_for(_model_type(model))
    spec = config.spec
    targets = find_targets(model, resolved)
    if spec.wraps_modules:
        layers = []
        for name in targets:
            base = model.get_submodule(name)
            try:
                layout = block_layout(name, oriented_shape(base)[0], resolved.fused_modules, getattr(model, "config", None))
                layer = SparseLayer(base, resolved, layout)
            except (ValueError, TypeError) as error:  # TypeError: a quantized base it cannot read (pst.base_weights)
                raise type(error)(f"cannot sparsify {name}: {error}") from None
            replace_module(model, name, layer)
            layers.append(layer)
        link_peers(layers)
    setattr(model, TRAINABLE_BEFORE_ATTRIBUTE, {name: p.requires_grad for name, p in model.named_parameters()})
    _set_trainable(model, resolved)
    setattr(model, CONFIG_ATTRIBUTE, resolved)
    logger.info("sparsified %d modules with method %s", len(targets), config.method)
    return model


def _set_trainable(model: nn.Module, config: PSTConfig) -> None:
    spec = config.spec
    for parameter in model.parameters():
        parameter.requires_grad_(spec.trains_pretrained)
    for _, layer in sparse_layers(model):
        for parameter in layer.method_parameters():
            parameter.requires_grad_(True)
    if config.train_head:
        for name, module in model.named_modules():
            if name and matches_target(name, config.head_modules or []):
                for parameter in module.parameters():
                    parameter.requires_grad_(True)


def set_sparsity(model: nn.Module, sparsity: float) -> None:
    """Set the current sparsity of every sparse layer (a no-op for methods that do not prune)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    for _, layer in sparse_layers(model):
        layer.sparsity = float(sparsity)


def invalidate_masks(model: nn.Module) -> None:
    """Make every sparse layer rebuild its mask at its next forward.

    Masks follow optimizer steps, ``load_state_dict`` and in-place edits on their own; call
    this only after changing parameters in a way torch does not track (through ``.data``).
    """
    for _, layer in sparse_layers(model):
        layer.invalidate()


def refresh_masks(model: nn.Module) -> None:
    """Bring every sparse layer's mask up to date now, with one grouped selection.

    An eager forward does this by itself. A ``torch.compile``-d model does not check its
    masks (no Python decision inside the compiled step): ``SparsityScheduler`` and
    ``SparsityCallback`` call this after each schedule step; a compiled loop without them
    calls it after each ``optimizer.step()``. Layers whose weights are sharded away (FSDP)
    are left to rebuild theirs in their unit's forward.
    """
    layers = [layer for _, layer in sparse_layers(model)]
    refresh_step_states([layer for layer in layers if layer._weights_present()])


@dataclass(frozen=True)
class TrainableParameters:
    """Parameter counts as the paper reports them.

    ``added``: parameters the method adds to the model (U, V, A, B, R, C or the movement
    scores), the paper's "extra trainable parameters". ``trainable``: everything the
    optimizer updates, i.e. ``added`` plus the trainable task head (and, for full
    fine-tuning methods, every pre-trained weight). ``total``: every parameter of the
    wrapped model, pre-trained and added. ``percent`` = 100 * trainable / total.
    """

    trainable: int
    total: int
    added: int
    head: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {self.percent:.4f} || added by the method: {self.added:,} || head: {self.head:,}"
        )


def trainable_parameters(model: nn.Module) -> TrainableParameters:
    """Count trainable, total, added and head parameters (shared tensors counted once).

    A DDP / DataParallel / compiled wrapper is looked through; FSDP1 would count shards, so it
    is refused (count on the model before wrapping it).
    """
    from .distributed import sharding, unwrap

    if sharding(model) == "fsdp1":
        raise ValueError("trainable_parameters counts an FSDP1 model's shards, not its parameters: "
                         "call it on the model before FullyShardedDataParallel wraps it")
    model = unwrap(model)
    unique = {id(p): p for p in model.parameters()}
    added = {id(p) for _, layer in sparse_layers(model) for p in layer.method_parameters()}
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    head_ids: set[int] = set()
    if config is not None and config.train_head:
        for name, module in model.named_modules():
            if name and matches_target(name, config.head_modules or []):
                head_ids |= {id(p) for p in module.parameters() if p.requires_grad}
    return TrainableParameters(
        trainable=sum(p.numel() for p in unique.values() if p.requires_grad),
        total=sum(p.numel() for p in unique.values()),
        added=sum(unique[i].numel() for i in added),
        head=sum(unique[i].numel() for i in head_ids),
    )


def optimizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Exactly the parameters the method trains, for the optimizer."""
    return [p for p in model.parameters() if p.requires_grad]
