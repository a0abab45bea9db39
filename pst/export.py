"""Leaving PST behind: merge into a plain transformers model, compressed checkpoints, sparsity checks."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from . import distributed
from .base_weights import float_dtype, is_quantized
from .config import PSTConfig
from .fused import BlockLayout
from .layers import SUPPORTED_MODULES
from .surgery import CONFIG_ATTRIBUTE, TRAINABLE_BEFORE_ATTRIBUTE, block_layout, matches_target, replace_module, sparse_layers

logger = logging.getLogger(__name__)

COMPRESSED_WEIGHTS = "model.sparse.safetensors"
_FORMAT = "pst-bitmask-v1"


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Bake M * W' into every sparse layer's weight and drop every PST parameter, in place.

    The result is a plain transformers model: ``save_pretrained`` writes a checkpoint that
    ``AutoModel*.from_pretrained`` loads with no ``pst`` installed. Every parameter gets back
    the ``requires_grad`` flag it had before ``sparsify`` froze the pre-trained weights.
    A DDP/DataParallel-wrapped model is merged inside its wrapper and returned unwrapped; a
    sharded (FSDP) model is refused: merging needs whole weights on one process.
    A layer over a quantized base (``pst.base_weights``) becomes a dense ``nn.Linear`` in the
    dtype it dequantizes to (bf16 for a bf16 model), and a warning says so.
    """
    if distributed.is_sharded(model):
        raise ValueError(
            "pst.merge needs whole weights, and this model is sharded (FSDP). Gather a full state dict on every "
            "rank: state = torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
            "options=StateDictOptions(full_state_dict=True, cpu_offload=True)); then on rank 0 build the model "
            "again unsharded, pst.sparsify it with the same config, load_state_dict(state) (the sparsity travels "
            "in the state dict) and pst.merge that copy. For the small adapter alone, call pst.save_adapter(model, "
            "folder) on every rank"
        )
    model = distributed.unwrap(model)
    layers = list(sparse_layers(model))
    quantized = [(name, layer.weight) for name, layer in layers if is_quantized(layer.weight)]
    if quantized:
        name, weight = quantized[0]
        logger.warning(
            "merge: %d sparse layers had quantized base weights (%s, e.g. %s); they are merged into dense %s weights",
            len(quantized), type(weight).__name__, name, str(float_dtype(weight)).removeprefix("torch."),
        )
    for name, layer in layers:
        replace_module(model, name, layer.to_plain_module())
    trainable_before = getattr(model, TRAINABLE_BEFORE_ATTRIBUTE, {})
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable_before.get(name, parameter.requires_grad))
    for attribute in (CONFIG_ATTRIBUTE, TRAINABLE_BEFORE_ATTRIBUTE):
        if hasattr(model, attribute):
            delattr(model, attribute)
    logger.info("merged %d sparse layers", len(layers))
    return model


def _weight_oriented(module: nn.Module) -> torch.Tensor:
    return module.weight.t() if isinstance(module, transformers.pytorch_utils.Conv1D) else module.weight


@torch.no_grad()
def sparsity_report(
    model: nn.Module, target_modules: list[str] | str | None = None, fused_modules: dict | None = None
) -> list[dict]:
    """Measured sparsity of every sparsified matrix, and of each matrix a fused module holds.

    On a wrapped model this measures M * W' as the forward pass uses it, block by block as
    each layer's ``layout`` splits its rows. On a plain (merged or reloaded) model it counts
    the zeros of the weights of ``target_modules``, split by ``fused_modules`` (default: the
    architecture's, resolved against the model's config, e.g. Phi-3's grouped-query
    ``qkv_proj`` or GPT-NeoX's per-head interleaved ``query_key_value``). Each row has
    ``zeros``/``numel``/``sparsity`` of the whole matrix and ``block_zeros``/``block_numel``/
    ``block_sparsity`` per block (one block for an unfused matrix).

    Wrapped (DDP, FSDP) models are measured inside their wrappers, under their own names. A
    sharded (FSDP) model's weights are gathered first: every rank must call this, and every
    rank gets the report.
    """
    if distributed.is_sharded(model):
        with distributed.gathered(model) as whole:
            return sparsity_report(whole, target_modules, fused_modules)
    model = distributed.unwrap(model)
    layers = [(distributed.clean_name(name), layer) for name, layer in sparse_layers(model)]
    if layers:
        matrices = [(name, layer.effective_weight(), layer.layout) for name, layer in layers]
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        resolved = PSTConfig(target_modules=target_modules, fused_modules=fused_modules).resolved_for(model_type)
        matrices = []
        for name, module in model.named_modules():
            name = distributed.clean_name(name)
            if name and isinstance(module, SUPPORTED_MODULES) and matches_target(name, resolved.target_modules):
                weight = _weight_oriented(module)
                try:
                    layout = block_layout(name, weight.shape[0], resolved.fused_modules, getattr(model, "config", None))
                except ValueError as error:
                    raise ValueError(f"cannot measure {name} block by block: {error}") from None
                matrices.append((name, weight, layout))
    return [_report_row(name, weight, layout) for name, weight, layout in matrices]


def _report_row(name: str, weight: torch.Tensor, layout: BlockLayout) -> dict:
    block_zeros = [int((block == 0).sum()) for block in layout.split(weight)]
    block_numel = [layout.block_rows(j) * weight.shape[1] for j in range(layout.num_blocks)]
    zeros = sum(block_zeros)
    return {
        "name": name,
        "shape": list(weight.shape),
        "numel": weight.numel(),
        "zeros": zeros,
        "sparsity": zeros / weight.numel(),
        "block_zeros": block_zeros,
        "block_numel": block_numel,
        "block_sparsity": [z / n for z, n in zip(block_zeros, block_numel)],
    }


# -- compressed checkpoints ---------------------------------------------------------------------


def save_compressed(model: nn.Module, folder: str | Path, min_sparsity: float = 0.5) -> Path:
    """Save a plain (merged) model with its sparse matrices packed; a wrapped model is refused.

    A matrix with at least ``min_sparsity`` zeros is stored as its non-zero values plus a
    bitmask (1 bit per entry); everything else is stored dense. At 90% sparsity a packed
    matrix takes 10% + 1/32 of its dense size. The config is saved beside it, so
    ``load_compressed`` needs nothing else.
    """
    if any(True for _ in sparse_layers(model)):
        raise ValueError("save_compressed expects a plain model: call pst.merge(model) first")
    distributed.refuse_wrapped(model, "save_compressed", "pass model.module (DDP), or merge a gathered copy (FSDP)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:  # tied weights: store once, remember the alias
            layout[name] = {"alias": seen[key]}
            continue
        seen[key] = name
        tensor = tensor.detach().cpu()
        zeros = int((tensor == 0).sum()) if tensor.is_floating_point() else 0
        if tensor.dim() == 2 and tensor.numel() and zeros / tensor.numel() >= min_sparsity:
            nonzero = tensor != 0
            bits = np.packbits(nonzero.flatten().numpy())
            tensors[f"{name}.values"] = tensor[nonzero].contiguous()
            tensors[f"{name}.bitmask"] = torch.from_numpy(bits)
            layout[name] = {"packed": list(tensor.shape)}
        else:
            tensors[name] = tensor.contiguous()
            layout[name] = {"dense": True}
    save_file(tensors, folder / COMPRESSED_WEIGHTS, metadata={"format": _FORMAT, "layout": json.dumps(layout)})
    model.config.save_pretrained(folder)
    return folder / COMPRESSED_WEIGHTS


def load_compressed(folder: str | Path, model_class: type | None = None) -> nn.Module:
    """Rebuild the exact model written by ``save_compressed``.

    ``model_class`` defaults to the architecture named in the saved config (e.g.
    ``BertForSequenceClassification``).
    """
    folder = Path(folder)
    path = folder / COMPRESSED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no compressed checkpoint {COMPRESSED_WEIGHTS} in {folder}")
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a pst compressed checkpoint (format {metadata.get('format')!r})")
    layout = json.loads(metadata["layout"])
    stored = load_file(path)
    state: dict[str, torch.Tensor] = {}
    for name, entry in layout.items():
        if "packed" in entry:
            shape = entry["packed"]
            numel = int(np.prod(shape))
            nonzero = torch.from_numpy(np.unpackbits(stored[f"{name}.bitmask"].numpy(), count=numel).astype(bool))
            values = stored[f"{name}.values"]
            dense = torch.zeros(numel, dtype=values.dtype)
            dense[nonzero] = values
            state[name] = dense.view(shape)
        elif "dense" in entry:
            state[name] = stored[name]
    for name, entry in layout.items():
        if "alias" in entry:
            state[name] = state[entry["alias"]]
    config = transformers.AutoConfig.from_pretrained(folder)
    if model_class is None:
        architectures = getattr(config, "architectures", None) or []
        if not architectures or not hasattr(transformers, architectures[0]):
            raise ValueError(f"cannot tell the model class from {folder}/config.json; pass model_class=")
        model_class = getattr(transformers, architectures[0])
    model = model_class(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
