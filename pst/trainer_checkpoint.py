"""An adapter read out of a ``Trainer`` checkpoint that has none beside it.

A Trainer checkpoint (``checkpoint-N/``) of a sparsified model holds the whole wrapped model in
``model.safetensors`` (U, V, ... next to the frozen weights). ``load_adapter(model, checkpoint,
config=...)`` takes the PST tensors out of it; the sparsity then comes from the schedule position
that ``SparsityCallback`` had reached (``trainer_state.json``), unless given.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .adapter_format import StoredAdapter, check_method
from .config import PSTConfig
from .schedule import cubic_sparsity

TRAINER_STATE = "trainer_state.json"
_LAYER_SYMBOLS = ("U", "V", "A", "B", "R", "C")


def is_trainer_checkpoint(directory: Path) -> bool:
    return (directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file()


def _weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or shards with an index)."""
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        with safe_open(directory / SAFE_WEIGHTS_NAME, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), directory / SAFE_WEIGHTS_NAME)
    index = json.loads((directory / SAFE_WEIGHTS_INDEX_NAME).read_text())
    return {name: directory / shard for name, shard in index["weight_map"].items()}


def _schedule_sparsity(directory: Path, config: PSTConfig) -> float:
    path = directory / TRAINER_STATE
    if not path.is_file():
        raise ValueError(f"{directory} has no {TRAINER_STATE} to tell the schedule position: pass sparsity=")
    state = json.loads(path.read_text())
    return cubic_sparsity(
        state["global_step"], state["max_steps"], config.warmup_fraction, config.cooldown_fraction,
        config.initial_sparsity, config.sparsity,
    )


def read_trainer_checkpoint(directory: Path, config: PSTConfig | None, sparsity: float | None) -> StoredAdapter:
    """The PST tensors of a Trainer checkpoint of a sparsified model, as a ``StoredAdapter``."""
    if config is None:
        raise ValueError(
            f"{directory} is a Trainer checkpoint without a pst adapter: pass the training config, "
            "load_adapter(model, folder, config=PSTConfig(...)), or train with pst.AdapterCheckpointCallback() "
            "so that every checkpoint carries its adapter"
        )
    config.validate()
    check_method(config, f"load_adapter(config=PSTConfig(method={config.method!r}))")
    files = _weight_files(directory)
    # A wrapped layer `X` stored X.U, X.V, ...: its (out, in) shape is U's rows and V's columns.
    layer_names = sorted({name.rpartition(".")[0] for name in files if name.rpartition(".")[2] in _LAYER_SYMBOLS})
    if not layer_names:
        raise ValueError(f"{directory} holds no PST tensors (U, V, ...): not a checkpoint of a sparsified model")

    def read(wanted: list[str]) -> dict[str, torch.Tensor]:
        tensors = {}
        for file in sorted({files[name] for name in wanted if name in files}):
            with safe_open(file, framework="pt") as handle:
                tensors.update({name: handle.get_tensor(name) for name in wanted if files.get(name) == file})
        return tensors

    shapes = read([f"{n}.U" for n in layer_names] + [f"{n}.V" for n in layer_names])
    missing_uv = [n for n in layer_names if f"{n}.U" not in shapes or f"{n}.V" not in shapes]
    if missing_uv:
        raise ValueError(f"{directory} lacks U or V for {missing_uv[:3]}: not a checkpoint of a 'pst' or 'lora' model")
    if sparsity is None:
        sparsity = _schedule_sparsity(directory, config) if config.spec.prunes else 0.0
    layers = {
        n: {"shape": [shapes[f"{n}.U"].shape[0], shapes[f"{n}.V"].shape[-1]], "sparsity": sparsity} for n in layer_names
    }
    model_config = directory / "config.json"
    model_type = json.loads(model_config.read_text()).get("model_type") if model_config.is_file() else None
    source = f"{directory} (Trainer checkpoint)"
    return StoredAdapter(source, config, model_type, layers, set(files), read, whole_model=True)
