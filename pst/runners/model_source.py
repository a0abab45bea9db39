"""Model names in run configs: hub names for real runs, ``tiny:<arch>`` for smoke runs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..models import TINY_ARCHS, build_tiny_model

TINY_PREFIX = "tiny:"


def resolve_model(model: str, models_dir: Path, corpus: Callable[[], list[str]]) -> str:
    """A path or hub name ``from_pretrained`` accepts.

    ``tiny:bert`` (or ``tiny:roberta``, ``tiny:gpt2``) builds a tiny random model with a
    tokenizer trained on ``corpus()`` into ``models_dir`` once and returns that folder, so
    smoke runs go through the same ``from_pretrained`` path as real checkpoints.
    """
    if not model.startswith(TINY_PREFIX):
        return model
    arch = model.removeprefix(TINY_PREFIX)
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny model {model!r}; expected one of {[TINY_PREFIX + a for a in TINY_ARCHS]}")
    return str(build_tiny_model(arch, Path(models_dir) / arch, corpus()))
