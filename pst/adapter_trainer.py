"""An adapter in every checkpoint ``transformers.Trainer`` saves.

A Trainer checkpoint (``checkpoint-N/``) of a sparsified model holds the whole wrapped model in
``model.safetensors``, which is what resuming needs. ``AdapterCheckpointCallback`` adds the small
adapter beside it, so the checkpoint also loads onto a fresh base model with ``pst.load_adapter``
(which reads checkpoints without one too: :mod:`pst.trainer_checkpoint`).
"""
from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .adapter import save_adapter
from .distributed import is_sharded


class AdapterCheckpointCallback(TrainerCallback):
    """Writes ``pst.save_adapter(model, checkpoint-N)`` into every checkpoint the Trainer saves."""

    def on_save(self, args, state, control, model=None, **kwargs):
        # A sharded model is gathered by every rank together (save_adapter writes on rank 0 only).
        if model is None or not (state.is_world_process_zero or is_sharded(model)):
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():  # absent under hyper-parameter search, whose runs have their own folders
            save_adapter(model, folder)
