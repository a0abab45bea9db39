"""PST through ``transformers.Trainer``, run by ``tests/test_distributed_trainer.py``:

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/trainer_worker.py {ddp,fsdp2,fsdp1} OUT
    python tests/distributed/trainer_worker.py reference OUT      # one process, the same micro-batches

(``fsdp2``/``fsdp1`` need GPUs: on CPU accelerate ignores the FSDP plugin and trains with DDP;
``sharding`` in the output says what ran.)

A tiny LLaMA, PST at 90% reached at step 6 of 8, 2 x 4 sequences per optimizer step: under
torchrun each rank takes 4, the reference accumulates two micro-batches of 4. Every process
writes ``OUT/<mode>-rank<r>.json`` with the hash and zero count of every mask after every step
and the training losses; rank 0 saves the adapter and checks that it reloads with the trained
model's logits.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/tiny_decoders.py

import pst  # noqa: E402
from pst import distributed  # noqa: E402
from tiny_decoders import VOCAB, causal_lm, token_batch  # noqa: E402

STEPS, PER_DEVICE, PROCESSES = 8, 4, 2


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int = STEPS * PER_DEVICE * PROCESSES, length: int = 12):
        self.ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class MaskRecorder(TrainerCallback):
    """The hash and zero count of every mask after each step (after the schedule moved)."""

    def __init__(self):
        self.history = []
        self.trainer = None

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer's wrapped model: FSDP1's root holds parameters the inner model cannot gather.
        with distributed.gathered(self.trainer.model_wrapped) as whole:
            masks = {}
            for name, layer in pst.sparse_layers(whole):
                mask = (layer.effective_weight() != 0).numpy()
                masks[distributed.clean_name(name)] = [hashlib.sha256(mask.tobytes()).hexdigest()[:16],
                                                       int((~mask).sum())]
        self.history.append(masks)


def arguments(mode: str, out: Path) -> TrainingArguments:
    common = dict(output_dir=str(out / f"trainer-{mode}"), max_steps=STEPS, per_device_train_batch_size=PER_DEVICE,
                  learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=not torch.cuda.is_available(),
                  disable_tqdm=True, seed=0, dataloader_num_workers=0)
    if mode == "reference":
        return TrainingArguments(gradient_accumulation_steps=PROCESSES, **common)
    if mode == "ddp":
        return TrainingArguments(**common)
    layer_class = ["LlamaDecoderLayer"]
    if mode == "fsdp2":
        fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": layer_class, "reshard_after_forward": True}
    else:
        fsdp_config = {"version": 1, "transformer_layer_cls_to_wrap": layer_class, "use_orig_params": True}
    return TrainingArguments(fsdp="full_shard auto_wrap", fsdp_config=fsdp_config, **common)


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    model = pst.sparsify(causal_lm("llama", seed=0), pst.PSTConfig(sparsity=0.9))
    recorder = MaskRecorder()
    trainer = Trainer(model=model, args=arguments(mode, out), train_dataset=Sequences(),
                      callbacks=[pst.SparsityCallback(), recorder])
    recorder.trainer = trainer
    trainer.train()
    rank = trainer.args.process_index
    result = {"mode": mode, "world_size": trainer.args.world_size, "masks": recorder.history,
              "wrapper": type(trainer.model_wrapped).__name__, "sharding": distributed.sharding(trainer.model_wrapped),
              "losses": [(e["step"], e["loss"], e["sparsity"]) for e in trainer.state.log_history if "loss" in e],
              "report": pst.sparsity_report(trainer.model_wrapped)}
    pst.save_adapter(trainer.model_wrapped, out / f"adapter-{mode}")  # every rank calls; rank 0 writes
    probe = token_batch(batch=2, length=10, seed=9)
    trainer.model_wrapped.eval()
    with torch.no_grad():
        logits = trainer.model_wrapped(**probe).logits
    if rank == 0:
        fresh = pst.load_adapter(causal_lm("llama", seed=0).eval(), out / f"adapter-{mode}")
        with torch.no_grad():
            result["adapter_logits_max_diff"] = float((fresh(**probe).logits - logits).abs().max())
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
