"""Model names in run configs: hub names for real runs, ``tiny:<arch>`` for smoke runs."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..models import TINY_ARCHS, build_tiny_model

TINY_PREFIX = "tiny:"
#: Where tiny models are built when set (tests share one build across the whole session).
CACHE_VARIABLE = "PST_TINY_MODEL_CACHE"


def resolve_model(model: str, models_dir: Path, corpus: Callable[[], list[str]] | None = None) -> str:
    """A path or hub name ``from_pretrained`` accepts.

    ``tiny:bert`` (or ``tiny:roberta``, ``tiny:gpt2``, ``tiny:llama``) builds a tiny random model with a
    tokenizer trained on ``corpus()`` (default: the real text shipped with the package,
    :func:`pst.repro.data.bundled.pretraining_corpus`), pre-trains it briefly on that corpus,
    and returns its folder under ``models_dir`` (or ``$PST_TINY_MODEL_CACHE``), so smoke runs
    go through the same ``from_pretrained`` path as real checkpoints. Each (arch, corpus) has
    its own folder, built once: callers with different corpora never rebuild each other's.
    """
    if not model.startswith(TINY_PREFIX):
        return model
    arch = model.removeprefix(TINY_PREFIX)
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny model {model!r}; expected one of {[TINY_PREFIX + a for a in TINY_ARCHS]}")
    if corpus is None:
        from ..data.bundled import pretraining_corpus as corpus
    texts = corpus()
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:10]
    models_dir = Path(os.environ.get(CACHE_VARIABLE) or models_dir)
    return str(build_tiny_model(arch, models_dir / f"{arch}-{digest}", texts))
