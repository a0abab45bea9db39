"""PST: parameter-efficient sparsity training for Hugging Face transformers.

    model = pst.sparsify(model, pst.PSTConfig(method="pst", sparsity=0.9))
    trainer = Trainer(model, ..., callbacks=[pst.SparsityCallback()])
    pst.merge(model).save_pretrained("out")   # a plain transformers checkpoint
    pst.save_adapter(model, "adapter")        # or only what PST trained; pst.load_adapter(base, "adapter")
"""
from . import distributed  # pst.distributed.unwrap / gathered: wrapped (DDP, FSDP) and sharded models
from . import kernels  # pst.kernels.set_mode: fused Triton kernels on CUDA, or the torch reference
from ._version import __version__
from .adapter import adapter_state_dict, load_adapter, save_adapter
from .adapter_trainer import AdapterCheckpointCallback
from .config import ARCHITECTURE_DEFAULTS, PSTConfig
from .export import load_compressed, merge, save_compressed, sparsity_report
from .layers import SparseLayer
from .masking import keep_mask, num_pruned
from .methods import METHODS, MethodSpec, get_method
from .schedule import SparsityCallback, SparsityScheduler, cubic_sparsity
from .semi_structured import is_n_m_sparse, to_semi_structured
from .surgery import (
    TrainableParameters,
    find_targets,
    invalidate_masks,
    optimizer_parameters,
    refresh_masks,
    set_sparsity,
    sparse_layers,
    sparsify,
    trainable_parameters,
)

__all__ = [
    "ARCHITECTURE_DEFAULTS", "METHODS", "AdapterCheckpointCallback", "MethodSpec", "PSTConfig", "SparseLayer",
    "SparsityCallback", "SparsityScheduler", "TrainableParameters", "adapter_state_dict", "cubic_sparsity",
    "distributed", "find_targets", "get_method", "invalidate_masks", "is_n_m_sparse", "keep_mask", "kernels", "load_adapter",
    "load_compressed", "merge", "num_pruned", "optimizer_parameters", "refresh_masks", "save_adapter", "save_compressed",
    "set_sparsity", "sparse_layers", "sparsify", "sparsity_report", "to_semi_structured", "trainable_parameters",
]
