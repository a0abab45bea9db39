"""A cheap fingerprint of the base weights an adapter was trained on.

PST's mask depends on the frozen weights (the |W'| term of the score), so an adapter put on
another checkpoint of the same architecture gives another model, and nothing else would notice.
``save_adapter`` records a few entries of every sparsified matrix; ``load_adapter`` reads the
same entries of the new base and warns (:class:`BaseMismatchWarning`) when they differ.

The choices (no package offers a fingerprint of this kind):

- **Where**: :data:`SAMPLES` positions per matrix from the golden-ratio (Weyl) sequence
  ``frac(i * 0.618...)`` scaled to the matrix size: spread over the whole matrix, fixed by its
  shape alone (no random generator, so the same on every device and torch version), and read
  by gathering those entries, never by copying the matrix.
- **How close**: the values are compared to bf16 precision (relative :data:`RELATIVE_TOLERANCE`,
  twice bf16's rounding error), so the same checkpoint loaded in fp32, bf16 or fp16 matches,
  while other weights (another seed, another fine-tune of the same model) differ in almost every
  sampled entry. A weight-quantized copy of the base does not match: its values differ by more.
- Matrices on the ``meta`` device (offloaded, or built without memory), and weights that cannot
  be indexed element-wise, are not sampled and so not checked.
"""
from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)

SCHEME = "weyl-samples-v1"
SAMPLES = 8
RELATIVE_TOLERANCE = 2.0**-7
ABSOLUTE_TOLERANCE = 1e-7  # fp16 keeps less relative precision below 6e-5 (subnormals)
_GOLDEN = (math.sqrt(5) - 1) / 2


class BaseMismatchWarning(UserWarning):
    """An adapter is being loaded onto other base weights than it was trained on."""


def _positions(shape: torch.Size, count: int) -> tuple[list[int], list[int]]:
    rows, columns = shape
    flat = [int((i * _GOLDEN) % 1.0 * rows * columns) for i in range(1, count + 1)]
    return [f // columns for f in flat], [f % columns for f in flat]


def sample_entries(weight: torch.Tensor, count: int = SAMPLES) -> list[float] | None:
    """``count`` entries of a 2-D ``weight`` at its fixed positions, as floats; None where they
    cannot be read (``meta`` device, or a tensor subclass without element indexing)."""
    if weight.device.type == "meta" or weight.dim() != 2:
        return None
    rows, columns = _positions(weight.shape, count)
    device = weight.device
    try:
        values = weight.detach()[torch.tensor(rows, device=device), torch.tensor(columns, device=device)]
        values = values.float().cpu().tolist()
    except (RuntimeError, TypeError, NotImplementedError) as error:
        # A fingerprint is a safety net: a weight it cannot read must not stop an adapter from saving.
        logger.info("no base fingerprint for a %s weight: %s", type(weight).__name__, error)
        return None
    return [float(f"{value:.8g}") for value in values]


def fingerprint(weights: dict[str, torch.Tensor]) -> dict:
    """The record stored in ``pst_adapter_config.json``: the sampled entries of each matrix by name."""
    matrices = {name: sample_entries(weight) for name, weight in weights.items()}
    return {"scheme": SCHEME, "matrices": {name: values for name, values in matrices.items() if values is not None}}


def _same(stored: list[float], here: list[float]) -> bool:
    return len(stored) == len(here) and all(
        math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE) for a, b in zip(stored, here)
    )


def differing_matrices(model: nn.Module, record: dict) -> tuple[list[str], int]:
    """The matrices of ``model`` (by module name) whose sampled entries differ from ``record``,
    in the record's order, and how many matrices were compared."""
    modules = dict(model.named_modules())
    differing, compared = [], 0
    for name, stored in record["matrices"].items():
        weight = getattr(modules.get(name), "weight", None)
        here = sample_entries(weight, len(stored)) if isinstance(weight, torch.Tensor) else None
        if here is None:
            continue
        compared += 1
        if not _same(stored, here):
            differing.append(name)
    return differing, compared


def warn_if_other_base(model: nn.Module, record: dict | None, source: str) -> None:
    """Warn, naming the first differing matrix, if ``model``'s weights are not those ``record``
    was taken from. Adapters saved before fingerprints existed (``record`` None) pass silently."""
    if not record:
        return
    if record.get("scheme") != SCHEME or not isinstance(record.get("matrices"), dict):
        logger.info("%s: base fingerprint of unknown scheme %r not checked", source, record.get("scheme"))
        return
    differing, compared = differing_matrices(model, record)
    if differing:
        warnings.warn(
            f"the adapter in {source} was trained on other base weights: {len(differing)} of {compared} sparsified "
            f"matrices differ from the ones it was saved with (first: {differing[0]}; compared to bf16 precision). "
            "PST's masks depend on the base weights, so this is not the model that was trained: load the base "
            "checkpoint the adapter was trained on",
            BaseMismatchWarning,
            stacklevel=4,  # the caller of load_adapter (through torch.no_grad's wrapper)
        )
