"""Fused projections: which output rows of one weight belong to each matrix it fuses.

Some models compute several of the paper's matrices with one module (GPT-2's ``c_attn``
holds q, k and v). PST gives each of them its own mask, V, B and C, as if they were
separate modules. A ``fused_modules`` value says how the output rows split:

- ``3``: three equal contiguous blocks (GPT-2 ``c_attn``; Phi-3 ``gate_up_proj`` is ``2``).
- ``[a, b, c]``: contiguous blocks with row counts proportional to a : b : c. Entries are
  integers or names of integer attributes of the model's config, resolved by
  ``pst.sparsify``: grouped-query attention's ``qkv_proj`` (Phi-3) is
  ``["num_attention_heads", "num_key_value_heads", "num_key_value_heads"]``. Row counts
  themselves (``[4096, 1024, 1024]``) work too.
- ``{"blocks": 3, "interleave": "num_attention_heads"}``: the rows are ``interleave``
  consecutive repetitions of the ``blocks`` pattern (an int or a list as above), and block
  j gathers its rows from every repetition. GPT-NeoX's ``query_key_value`` is viewed as
  (heads, 3 * head_dim) and split into q, k, v: block j of head h is rows
  h * 3 * hd + j * hd ... + hd.

:class:`BlockLayout` is the resolved form the layer uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_SPEC_KEYS = {"blocks", "interleave"}


def validate_spec(name: str, spec) -> None:
    """Check the shape of a ``fused_modules`` value (config attribute names are checked later)."""
    where = f"fused_modules[{name!r}]"
    if isinstance(spec, dict):
        if set(spec) != _SPEC_KEYS:
            raise ValueError(f"{where} as a dict needs exactly the keys 'blocks' and 'interleave', got {sorted(spec)}")
        _validate_size(where + "['interleave']", spec["interleave"])
        spec = spec["blocks"]
        where += "['blocks']"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{where} must list at least one block")
        for entry in spec:
            _validate_size(where, entry)
    elif not _is_positive_int(spec):
        raise ValueError(
            f"{where} must be a number of equal blocks, a list of relative block sizes, or "
            f"{{'blocks': ..., 'interleave': ...}}; got {spec!r}"
        )


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _validate_size(where: str, value) -> None:
    if not (_is_positive_int(value) or (isinstance(value, str) and value.isidentifier())):
        raise ValueError(f"{where}: {value!r} is neither an integer >= 1 nor a model config attribute name")


@dataclass(frozen=True)
class BlockLayout:
    """Rows of a fused weight: ``repeats`` repetitions of blocks with ``sizes`` rows each.

    Block j holds rows r * period + offset_j ... + sizes[j] for every repetition r, in that
    order (its own matrix has repeats * sizes[j] rows).
    """

    sizes: tuple[int, ...]
    repeats: int = 1

    @classmethod
    def equal(cls, blocks: int, rows: int) -> "BlockLayout":
        if rows % blocks:
            raise ValueError(f"{rows} output features cannot be split into {blocks} fused blocks")
        return cls((rows // blocks,) * blocks)

    @classmethod
    def from_spec(cls, spec, rows: int, model_config=None) -> "BlockLayout":
        """Resolve a validated ``fused_modules`` value for a weight with ``rows`` output rows."""
        validate_spec("<module>", spec)
        repeats = 1
        if isinstance(spec, dict):
            repeats = _resolve(spec["interleave"], model_config)
            spec = spec["blocks"]
        if rows % repeats:
            raise ValueError(f"{rows} output rows cannot be split into {repeats} interleaved repetitions")
        period = rows // repeats
        if _is_positive_int(spec):
            return cls(cls.equal(spec, period).sizes, repeats)
        weights = [_resolve(entry, model_config) for entry in spec]
        total = sum(weights)
        if any(period * w % total for w in weights):
            raise ValueError(f"{period} rows per repetition cannot be split in the proportions {weights}")
        return cls(tuple(period * w // total for w in weights), repeats)

    @property
    def num_blocks(self) -> int:
        return len(self.sizes)

    @property
    def period(self) -> int:
        return sum(self.sizes)

    @property
    def rows(self) -> int:
        return self.period * self.repeats

    def block_rows(self, block: int) -> int:
        return self.sizes[block] * self.repeats

    def rows_of(self, tensor: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s rows of a tensor whose dim 0 runs over all rows: a (repeats, size, ...) view."""
        start = sum(self.sizes[:block])
        grouped = tensor.view(self.repeats, self.period, *tensor.shape[1:])
        return grouped[:, start : start + self.sizes[block]]

    def split(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Each block's rows of ``tensor`` (dim 0 over all rows) as its own (block rows, ...) matrix."""
        return [self.rows_of(tensor, block).reshape(-1, *tensor.shape[1:]) for block in range(self.num_blocks)]

    def block_index(self, device: torch.device) -> torch.Tensor:
        """The block of every row, as a (rows,) int64 tensor."""
        # Built with fills only: a tensor made from a Python list is a blocking host-to-device copy.
        per_period = [torch.full((size,), block, device=device) for block, size in enumerate(self.sizes)]
        return torch.cat(per_period).repeat(self.repeats)


def _resolve(value, model_config) -> int:
    if _is_positive_int(value):
        return value
    resolved = getattr(model_config, value, None) if model_config is not None else None
    if not _is_positive_int(resolved):
        source = type(model_config).__name__ if model_config is not None else "no model config"
        raise ValueError(f"fused block size {value!r} must name an integer >= 1 of the model config ({source})")
    return resolved
