"""What an adapter folder holds, and reading one without touching a model.

:mod:`pst.adapter` (save and load) and :mod:`pst.trainer_checkpoint` (an adapter read out of a
``Trainer`` checkpoint) both speak this format; keeping it here lets each import it without
importing the other.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .config import PSTConfig

ADAPTER_WEIGHTS = "pst_adapter.safetensors"
ADAPTER_CONFIG = "pst_adapter_config.json"
FORMAT = "pst-adapter"
FORMAT_VERSION = 1


def check_method(config: PSTConfig, source: str) -> None:
    """Refuse the methods that train every pre-trained weight: they have no small adapter."""
    spec = config.spec
    if spec.trains_pretrained:
        raise ValueError(
            f"{source}: method {config.method!r} fine-tunes every pre-trained weight, so there is no "
            "small adapter to save; save the whole model with pst.merge(model).save_pretrained(folder). "
            "Adapters exist for the methods that freeze the base model: 'pst', 'lora'"
        )


@dataclass
class StoredAdapter:
    """What ``load_adapter`` restores, whichever folder it came from.

    ``layers`` maps each wrapped module to its (out, in) ``shape`` and ``sparsity``; ``names``
    are the stored tensors, which ``read`` returns by name. ``whole_model``: the file holds the
    whole wrapped model (a Trainer checkpoint), not only the adapter. ``base_fingerprint``: the
    sample of the base weights recorded at save time (:mod:`pst.base_fingerprint`), if any.
    """

    source: str
    config: PSTConfig
    model_type: str | None
    layers: dict[str, dict]
    names: set[str]
    read: Callable[[list[str]], dict[str, torch.Tensor]]
    whole_model: bool = False
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # of the stored tensors, when cheap to know
    base_fingerprint: dict | None = None


def read_adapter_folder(directory: Path) -> StoredAdapter:
    """Parse and validate ``pst_adapter_config.json`` and the tensor names of the weights file."""
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    try:
        description = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    found = description.get("format") if isinstance(description, dict) else None
    if found != FORMAT:
        raise ValueError(f"{config_path} is not a pst adapter config (format {found!r}, expected {FORMAT!r})")
    version = description.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format version {version!r}; this pst reads versions <= {FORMAT_VERSION}: upgrade pst"
        )
    absent = [key for key in ("pst_config", "layers") if not isinstance(description.get(key), dict)]
    if absent:
        raise ValueError(f"{config_path} lacks {absent} (an incomplete or hand-edited file?)")
    config = PSTConfig.from_dict(description["pst_config"])
    check_method(config, str(config_path))
    with safe_open(weights_path, framework="pt") as handle:
        shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}

    def read(wanted: list[str]) -> dict[str, torch.Tensor]:
        with safe_open(weights_path, framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in wanted if name in shapes}

    return StoredAdapter(
        str(directory), config, description.get("model_type"), description["layers"], set(shapes), read,
        shapes=shapes, base_fingerprint=description.get("base_fingerprint"),
    )
