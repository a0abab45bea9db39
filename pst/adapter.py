"""Adapter-only checkpoints: save what PST trained, put it back on a freshly loaded base model.

PST trains ~1.5-2.5% of a model's parameters (U, V, A, B, R, C, and the task head); the frozen
pre-trained weights are already on disk wherever the base model came from. So, as peft does
for LoRA, an adapter is two files:

- ``pst_adapter.safetensors``: the trained tensors, by their names in the wrapped model;
- ``pst_adapter_config.json``: the (resolved) ``PSTConfig``, every wrapped layer's shape and
  current sparsity (so the masks come back identical), the model type, a format version,
  and a fingerprint of the base weights (:mod:`pst.base_fingerprint`), so that loading onto
  other weights of the same shape warns.

The names differ from peft's ``adapter_config.json`` on purpose: transformers'
``from_pretrained`` and ``Trainer`` take a folder holding ``adapter_config.json`` for a peft
adapter, so a PST adapter saved beside a model would break loading that model.

``load_adapter`` validates everything it can before touching the model (model type, method,
layer names and shapes, head parameters), so bad input leaves the base model as it was.
It also reads a ``Trainer`` checkpoint folder, whose ``model.safetensors`` holds the whole
wrapped model (see :mod:`pst.trainer_checkpoint`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from . import distributed
from ._version import __version__
from .adapter_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FORMAT,
    FORMAT_VERSION,
    StoredAdapter,
    check_method,
    read_adapter_folder,
)
from .base_fingerprint import fingerprint, warn_if_other_base
from .config import PSTConfig
from .surgery import CONFIG_ATTRIBUTE, find_targets, matches_target, sparse_layers, sparsify
from .trainer_checkpoint import is_trainer_checkpoint, read_trainer_checkpoint

logger = logging.getLogger(__name__)

_PEFT_CONFIG = "adapter_config.json"


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _oriented_shape(module: nn.Module) -> list[int]:
    """(out, in) of a Linear, Conv1D (stored in x out) or sparse layer."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return [module.out_features, module.in_features]
    if hasattr(module, "nf"):  # transformers Conv1D
        return [module.nf, module.weight.shape[0]]
    return list(module.weight.shape)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the method trains, by its name in the wrapped model: the layers' added
    parameters (U, V, A, B, R, C) and the task head's when ``train_head``.

    Found inside DDP/FSDP wrappers, named as in the bare model; a sharded (FSDP) model's
    tensors are gathered whole (every rank must call it)."""
    if distributed.is_sharded(model):  # copies: the gathered tensors are freed when the block ends
        with distributed.gathered(model) as whole:
            return {name: tensor.clone() for name, tensor in adapter_state_dict(whole).items()}
    model = distributed.unwrap(model)
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if config is None:
        raise ValueError("this model is not sparsified: call pst.sparsify(model, config) before saving an adapter")
    check_method(config, "save_adapter")
    wanted = {id(p) for _, layer in sparse_layers(model) for p in layer.method_parameters()}
    if config.train_head:
        for name, module in model.named_modules():
            if name and matches_target(name, config.head_modules or []):
                wanted |= {id(p) for p in module.parameters()}
    return {distributed.clean_name(name): p.detach() for name, p in model.named_parameters() if id(p) in wanted}


def adapter_description(model: nn.Module) -> dict:
    """The content of ``pst_adapter_config.json`` for a sparsified model."""
    model = distributed.unwrap(model)
    config: PSTConfig = getattr(model, CONFIG_ATTRIBUTE)
    layers = {
        distributed.clean_name(name): {
            "shape": _oriented_shape(layer), "blocks": layer.blocks, "sparsity": layer.sparsity,
        }
        for name, layer in sparse_layers(model)
    }
    sparsities = {entry["sparsity"] for entry in layers.values()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pst_version": __version__,
        "model_type": _model_type(model),
        "model_class": type(model).__name__,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None) or None,
        "pst_config": config.to_dict(),
        "sparsity": sparsities.pop() if len(sparsities) == 1 else None,
        "layers": layers,
        "base_fingerprint": fingerprint(
            {distributed.clean_name(name): layer.weight for name, layer in sparse_layers(model)}
        ),
    }


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write only what PST trained (and what it takes to restore it) into ``directory``.

    Returns the folder. For BERT-base that is 2.8 M parameters (11 MB in fp32) instead of 110 M.
    Wrapped models (DDP, FSDP) are saved as the bare model would be, by rank 0 only; a sharded
    (FSDP) model is gathered first, so every rank must call it.
    """
    if distributed.is_sharded(model):
        with distributed.gathered(model) as whole:
            return save_adapter(whole, directory)
    model = distributed.unwrap(model)
    tensors = adapter_state_dict(model)
    description = adapter_description(model)
    if not distributed.is_main_process():
        return Path(directory)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Detached CPU copies: safetensors refuses tensors that share storage (e.g. a tied head).
    save_file(
        {name: t.to("cpu", copy=True).contiguous() for name, t in tensors.items()},
        directory / ADAPTER_WEIGHTS,
        metadata={"format": FORMAT},
    )
    (directory / ADAPTER_CONFIG).write_text(json.dumps(description, indent=2) + "\n")
    logger.info("saved a pst adapter of %d tensors to %s", len(tensors), directory)
    return directory


# -- loading ------------------------------------------------------------------------------------


def _stored(directory: Path, config: PSTConfig | None, sparsity: float | None) -> StoredAdapter:
    if not directory.is_dir():
        raise FileNotFoundError(f"no such adapter folder: {directory}")
    if (directory / ADAPTER_CONFIG).is_file():
        if config is not None:
            raise ValueError(
                f"{directory} holds a pst adapter with its own config; "
                "config= is only for Trainer checkpoints without one"
            )
        return read_adapter_folder(directory)
    if is_trainer_checkpoint(directory):
        return read_trainer_checkpoint(directory, config, sparsity)
    peft_config = directory / _PEFT_CONFIG
    if peft_config.is_file():
        try:
            peft_type = json.loads(peft_config.read_text()).get("peft_type")
        except (json.JSONDecodeError, AttributeError):
            peft_type = None
        raise ValueError(
            f"{directory} holds a peft adapter ({_PEFT_CONFIG}, peft_type {peft_type!r}), not a pst one: "
            "load it with peft.PeftModel.from_pretrained(base_model, folder)"
        )
    raise FileNotFoundError(
        f"{directory} has neither a pst adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor a Trainer checkpoint "
        f"(model.safetensors); save one with pst.save_adapter(model, folder)"
    )


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def _first(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _check_fits(model: nn.Module, stored: StoredAdapter) -> None:
    """Raise before any change to ``model`` if the adapter was trained on another base model."""
    if getattr(model, CONFIG_ATTRIBUTE, None) is not None or any(True for _ in sparse_layers(model)):
        raise ValueError("load_adapter needs a fresh base model, and this one is already sparsified")
    here = _model_type(model)
    if stored.model_type is not None and here is not None and stored.model_type != here:
        raise ValueError(f"the adapter in {stored.source} was trained on a {stored.model_type!r} model, not {here!r}")
    hint = "load the base model the adapter was trained on"
    try:
        targets = find_targets(model, stored.config)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the adapter in {stored.source} does not fit this base model ({hint}): {error}") from None
    modules = dict(model.named_modules())
    missing = sorted(set(stored.layers) - set(targets))
    extra = sorted(set(targets) - set(stored.layers))
    if missing or extra:
        raise ValueError(
            f"the adapter in {stored.source} does not fit this base model ({hint}): "
            + (f"adapter layers missing here: {_first(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"layers here the adapter lacks: {_first(extra)}" if extra else "")
        )
    wrong = [
        f"{name} is {_dims(_oriented_shape(modules[name]))} here but {_dims(entry['shape'])} in the adapter"
        for name, entry in stored.layers.items()
        if _oriented_shape(modules[name]) != list(entry["shape"])
    ]
    if wrong:
        raise ValueError(f"the adapter in {stored.source} does not fit this base model ({hint}): {_first(wrong, 3)}")
    if stored.whole_model:
        return  # every parameter is stored: the head is checked once the model is sparsified
    parameters = dict(model.named_parameters())
    layer_names = set(stored.layers)
    head_names = sorted(n for n in stored.names if n.rpartition(".")[0] not in layer_names)
    absent = [n for n in head_names if n not in parameters]
    if absent:
        raise ValueError(
            f"the adapter in {stored.source} holds head parameters this {type(model).__name__} lacks: {_first(absent)} "
            "(was it trained on another task class, e.g. *ForSequenceClassification?)"
        )
    wrong = [
        f"{n} is {_dims(parameters[n].shape)} here but {_dims(stored.shapes[n])} in the adapter"
        for n in head_names
        if n in stored.shapes and list(parameters[n].shape) != stored.shapes[n]
    ]
    if wrong:
        raise ValueError(
            f"the adapter's task head does not fit this base model ({_first(wrong, 3)}): "
            "load the base model with the same head, e.g. the same num_labels"
        )


@torch.no_grad()
def load_adapter(
    model: nn.Module, directory: str | Path, *, config: PSTConfig | None = None, sparsity: float | None = None
) -> nn.Module:
    """Sparsify a freshly loaded base ``model`` as the adapter was trained and restore what PST trained.

    ``directory`` is a folder written by :func:`save_adapter`, or a ``Trainer`` checkpoint folder
    (``checkpoint-N``); one without a pst adapter needs the training ``config=``, and takes the
    sparsity from ``sparsity=`` or else from the schedule position in ``trainer_state.json``.
    Tensors are copied into the base model's dtype and device. Returns ``model`` (changed in place).
    Load before wrapping or sharding: a wrapper built before would not see the new parameters.
    """
    distributed.refuse_wrapped(model, "load_adapter", "load the adapter into the bare base model first, then wrap "
                               "or shard it (DDP(model), fully_shard(...), Trainer)")
    stored = _stored(Path(directory), config, sparsity)
    _check_fits(model, stored)
    warn_if_other_base(model, stored.base_fingerprint, stored.source)
    sparsify(model, stored.config)
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - stored.names)
    if missing:
        raise ValueError(
            f"{stored.source} lacks tensors this adapter needs: {_first(missing)} (an incomplete or corrupt file?)"
        )
    unexpected = [] if stored.whole_model else sorted(stored.names - set(expected))
    if unexpected:
        raise ValueError(
            f"{stored.source} holds tensors that match nothing in the sparsified model: {_first(unexpected)}"
        )
    tensors = stored.read(sorted(expected))
    wrong = [
        f"{name}: {tuple(tensors[name].shape)} stored, {tuple(target.shape)} expected"
        for name, target in expected.items()
        if tensors[name].shape != target.shape
    ]
    if wrong:
        raise ValueError(f"{stored.source} does not fit the sparsified model: {_first(wrong, 3)}")
    for name, target in expected.items():
        target.copy_(tensors[name])  # into the base model's dtype and device
    layers = dict(sparse_layers(model))
    for name, entry in stored.layers.items():
        layers[name].sparsity = float(entry["sparsity"])
    if sparsity is not None:
        for layer in layers.values():
            layer.sparsity = float(sparsity)
    logger.info("loaded a pst adapter of %d tensors from %s", len(expected), stored.source)
    return model
