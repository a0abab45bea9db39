"""2:4 inference: turn the exactly 2:4-sparse ``nn.Linear`` weights of a merged model into PyTorch
semi-structured sparse tensors, which cuSPARSELt / CUTLASS multiply on sparse tensor cores.

Unstructured sparsity saves storage (``pst.save_compressed``) but no GPU time; 2:4 sparsity (at
most 2 non-zeros in every 4 consecutive weights of a row, i.e. along the input dimension of an
``nn.Linear`` weight) is the pattern NVIDIA GPUs from Ampere on (compute capability 8.0) run up to
~2x faster. ``torch.sparse.to_sparse_semi_structured`` does not check the pattern: a weight that is
not 2:4 is silently pruned further. So this module checks first, with errors that name the module,
and only then converts. Its own module (not ``pst.export``): the concept is the inference backend,
and it needs nothing of PST but a plain model.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .surgery import sparse_layers

logger = logging.getLogger(__name__)

#: Sparse tensor cores arrived with Ampere.
MIN_COMPUTE_CAPABILITY = (8, 0)


def is_n_m_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive entries along the last dimension holds at most ``n``
    non-zeros (``n:m`` sparsity as the hardware counts it). Works on any device, CPU included."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"an n:m pattern needs integers 0 < n < m, got {n}:{m}")
    if weight.dim() < 1 or weight.shape[-1] % m:
        return False
    groups = (weight != 0).reshape(-1, m)
    return bool((groups.sum(dim=1) <= n).all())


def _backend() -> type:
    """The class ``to_sparse_semi_structured`` will build: cuSPARSELt unless CUTLASS is forced."""
    from torch.sparse import SparseSemiStructuredTensor

    if SparseSemiStructuredTensor._FORCE_CUTLASS:
        return torch.sparse.SparseSemiStructuredTensorCUTLASS
    return torch.sparse.SparseSemiStructuredTensorCUSPARSELT


def _shape_and_dtype_problem(name: str, weight: torch.Tensor, backend: type) -> str | None:
    constraints = backend._DTYPE_SHAPE_CONSTRAINTS
    if weight.dtype not in constraints:
        supported = ", ".join(str(d).removeprefix("torch.") for d in constraints)
        dtype = str(weight.dtype).removeprefix("torch.")
        return f"{name}: dtype {dtype} (the {backend.BACKEND} backend takes {supported}; cast the model, e.g. model.half())"
    rows, cols = constraints[weight.dtype].sparse_min_rows, constraints[weight.dtype].sparse_min_cols
    out_features, in_features = weight.shape
    if out_features % rows or in_features % cols:
        return f"{name}: shape {out_features}x{in_features} is not a multiple of {rows}x{cols}"
    return None


def _device_problem(weights: dict[str, torch.Tensor], backend: type) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU: semi-structured sparse matrix products run only on NVIDIA GPUs (not on CPU)"
    on_cpu = [name for name, w in weights.items() if not w.is_cuda]
    if on_cpu:
        return f"weights not on a CUDA device ({on_cpu[0]} is on {weights[on_cpu[0]].device}): call model.cuda() first"
    for device in {w.device for w in weights.values()}:
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_COMPUTE_CAPABILITY:
            return (
                f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}; "
                f"2:4 sparse tensor cores need {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer (Ampere+)"
            )
    if backend.BACKEND == "cusparselt" and not torch.backends.cusparselt.is_available():
        return (
            "this PyTorch build has no cuSPARSELt; use the CUTLASS kernels with "
            "torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True"
        )
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module, modules: list[str] | None = None) -> list[str]:
    """Replace 2:4-sparse ``nn.Linear`` weights of a merged model by semi-structured sparse tensors, in place.

    ``modules``: the names to convert, each of which must be exactly 2:4; ``None``: every
    ``nn.Linear`` whose weight is 2:4 (dense ones, like the LM head, stay dense). The model must be
    on a CUDA GPU of compute capability >= 8.0, in float16 or bfloat16 (float32 only with CUTLASS),
    for inference (the converted weights do not train). Returns the converted names.
    """
    if any(True for _ in sparse_layers(model)):
        raise ValueError("to_semi_structured expects a plain model: call pst.merge(model) first")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if modules is None:
        chosen = [name for name, m in linears.items() if is_n_m_sparse(m.weight, 2, 4)]
        if not chosen:
            raise ValueError(
                f"no nn.Linear of this {type(model).__name__} has 2:4 sparse weights (at most 2 non-zeros in "
                "every 4 consecutive inputs); train with an N:M pattern and pst.merge(model) first"
            )
    else:
        unknown = [name for name in modules if name not in linears]
        if unknown:
            raise ValueError(f"not nn.Linear modules of this model: {unknown[:5]}; some that are: {list(linears)[:5]}")
        chosen = list(modules)
        dense = [name for name in chosen if not is_n_m_sparse(linears[name].weight, 2, 4)]
        if dense:
            raise ValueError(f"weights that are not 2:4 sparse along their input dimension: {dense[:5]}")
    backend = _backend()
    weights = {name: linears[name].weight for name in chosen}
    problems = [p for p in (_shape_and_dtype_problem(n, w, backend) for n, w in weights.items()) if p]
    if problems:
        raise ValueError(
            f"cannot convert to {backend.BACKEND} semi-structured sparse tensors: " + "; ".join(problems[:5])
        )
    problem = _device_problem(weights, backend)
    if problem:
        raise RuntimeError(f"2:4 inference is not available here: {problem}")
    from torch.sparse import to_sparse_semi_structured

    for name in chosen:
        module = linears[name]
        sparse = to_sparse_semi_structured(module.weight.detach().contiguous())
        module.weight = nn.Parameter(sparse, requires_grad=False)
    logger.info("converted %d nn.Linear weights to %s 2:4 semi-structured tensors", len(chosen), backend.BACKEND)
    return chosen
